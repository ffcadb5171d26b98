package proxy

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/redistest"
)

// TestSessionLifecycleRace starts and ends replica sessions for seconds
// while history resets, replication ID changes, REPLICAOF moves, INFO and
// finally a shutdown run against them: under -race, any unsynchronised
// session field shows.
func TestSessionLifecycleRace(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	alt, err := faultproxy.New(origin.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer alt.Close()
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.addr, time.Second)
				if err != nil {
					continue
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				fmt.Fprintf(c, "REPLCONF listening-port %d\r\nREPLCONF capa eof capa psync2\r\n", 20000+w*1000+i%1000)
				if i%3 == 0 {
					fmt.Fprintf(c, "PSYNC %s %d\r\n", p.position().hist.ReplID, p.bl.End()+1)
				} else {
					fmt.Fprint(c, "PSYNC ? -1\r\n")
				}
				br := bufio.NewReader(c)
				_, _ = br.ReadString('\n')
				_, _ = br.ReadString('\n')
				c.Close()
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			switch i % 4 {
			case 0:
				p.closeSessions("history_reset")
			case 1:
				p.dropTrimmedReplicas()
			case 2:
				_ = p.info()
				_ = p.Status()
			case 3:
				target := origin.Addr()
				if i%8 == 3 {
					target = alt.Addr()
				}
				p.moveUpstream(target)
			}
		}
	})
	time.Sleep(3 * time.Second)
	// Shut down while sessions are still starting.
	p.stop(t)
	close(stop)
	wg.Wait()
}
