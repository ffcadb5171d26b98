package chaos

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// A fault does something to the world and says what it may cost: the
// full syncs it explains (ledger.allow).
type fault struct {
	kind string
	run  func(w *world) (string, error)
}

// Kinds, every one in the schedule of a run.
var faults = []fault{
	{"proxy-sigkill", func(w *world) (string, error) {
		p := w.pickProxy()
		p.kill()
		w.pause(0, 1500)
		return p.name, p.start()
	}},
	{"proxy-sigterm", func(w *world) (string, error) {
		p := w.pickProxy()
		if p.stopped {
			p.signal(syscall.SIGCONT)
		}
		p.signal(syscall.SIGTERM)
		if err := waitFor(15*time.Second, p.proc.Exited); err != nil {
			return p.name, fmt.Errorf("proxy %s did not exit within 15 s of SIGTERM", p.name)
		}
		return p.name, p.start()
	}},
	{"proxy-sigstop", func(w *world) (string, error) {
		p := w.pickProxy()
		if !p.running() || p.stopped {
			return p.name + " (not running)", nil
		}
		p.signal(syscall.SIGSTOP)
		p.stopped = true
		w.pause(1000, 4000)
		p.signal(syscall.SIGCONT)
		p.stopped = false
		return p.name, nil
	}},
	{"power-cut", func(w *world) (string, error) {
		p := w.pickProxy()
		p.kill()
		if err := p.fs.PowerCut(); err != nil {
			return p.name, err
		}
		return p.name, p.start()
	}},
	{"replica-restart", func(w *world) (string, error) {
		r := w.replicas[w.rnd.IntN(len(w.replicas))]
		r.srv.Kill()
		// No persistence: it comes back empty and must be sent a snapshot,
		// by its proxy (never a fork on the origin).
		w.ledger.allow(r.name, "restarted without persistence")
		return r.name, r.srv.Restart()
	}},
	{"partition-upstream", func(w *world) (string, error) {
		p := w.pickProxy()
		p.up.Refuse(true)
		p.up.CutAll()
		w.pause(500, 5000)
		p.up.Refuse(false)
		return p.name + "↑", nil
	}},
	{"partition-replicas", func(w *world) (string, error) {
		p := w.pickProxy()
		p.front.Refuse(true)
		p.front.CutAll()
		w.pause(500, 5000)
		p.front.Refuse(false)
		return p.name + "↓", nil
	}},
	{"link-reset", func(w *world) (string, error) {
		p := w.pickProxy()
		if w.rnd.IntN(2) == 0 {
			p.up.CutAll()
			return p.name + "↑", nil
		}
		p.front.CutAll()
		return p.name + "↓", nil
	}},
	{"link-truncate", func(w *world) (string, error) {
		p := w.pickProxy()
		n := int64(1 + w.rnd.IntN(4<<20))
		p.up.CutAfter(n) // the next upstream connection breaks after n bytes
		p.up.CutAll()
		return fmt.Sprintf("%s↑ after %d bytes", p.name, n), nil
	}},
	{"disk-full", func(w *world) (string, error) {
		p := w.pickProxy()
		p.fs.SetFull(true)
		w.pause(1000, 4000)
		p.fs.SetFull(false)
		return p.name, nil
	}},
	{"origin-failover", func(w *world) (string, error) { return "", w.failover() }},
	{"origin-restart", func(w *world) (string, error) {
		o := w.currentOrigin()
		ctx := context.Background()
		w.load.stop() // Restart replaces the server's client, which the load uses
		defer w.load.run()
		// SHUTDOWN SAVE keeps the replication ID and offset in the RDB, but
		// not the backlog: a replica that had not caught up (a proxy just
		// restarted, say) cannot continue and must full-sync, and the tier
		// below it with it.
		end := o.InfoInt("replication", "master_repl_offset")
		_ = o.Client().Do(ctx, "SHUTDOWN", "SAVE").Err()
		if err := waitFor(20*time.Second, o.Exited); err != nil {
			return "", fmt.Errorf("origin did not shut down: %w", err)
		}
		w.allowBehind(end)
		// As a master, whatever it was started as: after a failover the
		// origin is the old standby, whose arguments say --replicaof.
		return "", o.Restart("--replicaof", "no", "one")
	}},
	{"replica-move", func(w *world) (string, error) {
		r := w.replicas[w.rnd.IntN(len(w.replicas))]
		to := w.proxies[0]
		if r.on == to {
			to = w.proxies[1]
		}
		h, pt, _ := net.SplitHostPort(to.front.Addr())
		if err := r.srv.Client().Do(context.Background(), "REPLICAOF", h, pt).Err(); err != nil {
			return r.name, err
		}
		r.on = to
		return r.name + " to " + to.name, nil
	}},
	{"write-burst", func(w *world) (string, error) {
		n := 20 + w.rnd.IntN(60)
		return strconv.Itoa(n) + " MB", burst(w.currentOrigin().Client(), int64(n)<<20)
	}},
}

// allowBehind lets whatever is behind offset end (the origin's last byte
// before it restarted) take one full sync: proxy A and everything under
// it when A is behind, the standby when it is.
func (w *world) allowBehind(end int64) {
	why := fmt.Sprintf("behind the origin's offset %d when it restarted without its backlog", end)
	if m, err := w.standby.Info("replication"); err != nil || infoInt(m, "master_repl_offset") < end {
		w.ledger.allow(filepath.Base(w.standby.Dir), why)
	}
	if m, err := infoAt(w.proxies[0].addr, "replication"); err != nil || infoInt(m, "master_repl_offset") < end {
		w.ledger.allow("proxyA", why)
		w.ledger.allow("proxyB", why)
		for _, r := range w.replicas {
			w.ledger.allow(r.name, why)
		}
	}
}

func (w *world) pickProxy() *proxyNode { return w.proxies[w.rnd.IntN(len(w.proxies))] }

// pause waits a random time in [lo, hi] ms: how long a fault lasts.
func (w *world) pause(lo, hi int) {
	time.Sleep(time.Duration(lo+w.rnd.IntN(hi-lo+1)) * time.Millisecond)
}

// failover promotes the standby as Sentinel does: the origin's writes
// paused, the standby caught up and promoted, proxy A pointed at it, the
// old origin made its replica.
func (w *world) failover() error {
	ctx := context.Background()
	old, next := w.currentOrigin(), w.standby
	if err := old.Client().Do(ctx, "CLIENT", "PAUSE", "20000", "WRITE").Err(); err != nil {
		return fmt.Errorf("pause the origin: %w", err)
	}
	defer old.Client().Do(ctx, "CLIENT", "UNPAUSE")
	if err := waitFor(15*time.Second, func() bool {
		m, err := next.Info("replication")
		o, err2 := old.Info("replication")
		return err == nil && err2 == nil && m["master_link_status"] == "up" &&
			infoInt(m, "master_repl_offset") == infoInt(o, "master_repl_offset")
	}); err != nil {
		return fmt.Errorf("standby catching up: %w", err)
	}
	if err := next.Client().Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	w.swapRoles()
	a := w.proxies[0]
	a.up.SetTarget(next.Addr())
	a.up.CutAll()
	h, pt, _ := net.SplitHostPort(next.Addr())
	if err := old.Client().Do(ctx, "REPLICAOF", h, pt).Err(); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	return nil
}

// burst writes about n bytes of 100 KB values, 16 to a pipeline.
func burst(cli *redis.Client, n int64) error {
	ctx := context.Background()
	val := strings.Repeat("b", 100<<10)
	for i := int64(0); i*int64(len(val)) < n; i += 16 {
		pipe := cli.Pipeline()
		for j := range int64(16) {
			pipe.Set(ctx, "burst:"+strconv.FormatInt((i+j)%500, 10), val, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("burst: %w", err)
		}
	}
	return nil
}
