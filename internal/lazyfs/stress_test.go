package lazyfs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Readers of a file being appended to, reading only what the writer's
// appends have returned, see exactly the bytes written, with fsyncs
// between: as a log's readers do.
func TestAppendWhileReading(t *testing.T) {
	l := mountT(t)
	p := filepath.Join(l.Mountpoint, "seg")
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var written atomic.Int64
	var want []byte
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	for range 2 {
		wg.Go(func() {
			r, err := os.Open(p)
			if err != nil {
				bad.Store(err.Error())
				return
			}
			defer r.Close()
			buf := make([]byte, 1<<20)
			var pos int64
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := written.Load()
				if n <= pos {
					continue
				}
				m, err := r.ReadAt(buf[:min(int64(len(buf)), n-pos)], pos)
				if err != nil {
					bad.Store(err.Error())
					return
				}
				mu.Lock()
				ok := bytes.Equal(buf[:m], want[pos:pos+int64(m)])
				mu.Unlock()
				if !ok {
					bad.Store(fmt.Sprintf("a reader saw bytes that were not written, in [%d, %d)", pos, pos+int64(m)))
					return
				}
				pos += int64(m)
			}
		})
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline) && bad.Load() == nil; i++ {
		chunk := make([]byte, 1+rnd.IntN(300))
		for j := range chunk {
			chunk[j] = byte('a' + rnd.IntN(26))
		}
		mu.Lock()
		want = append(want, chunk...)
		mu.Unlock()
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
		written.Add(int64(len(chunk)))
		if i%500 == 0 {
			if err := w.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
}
