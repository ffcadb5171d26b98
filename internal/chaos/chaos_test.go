package chaos

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/lazyfs"
	"github.com/replproxy/replproxy/internal/redistest"
)

// TestChaosShort: a short chaos run with a fixed seed, every fault kind
// at least once (CHAOS_SEED and CHAOS_DURATION override, to replay a
// failing schedule or run longer).
func TestChaosShort(t *testing.T) {
	if err := redistest.Available(); err != nil {
		t.Fatal(err)
	}
	seed := uint64(20261206)
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = n
	}
	d := 90 * time.Second
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Seed: seed, Duration: d, Dir: t.TempDir(), ProxyBin: redistest.ProxyBinary(t), Log: testWriter{t}}
	rep, err := Run(cfg)
	if errors.Is(err, lazyfs.ErrUnavailable) {
		t.Skipf("no FUSE here for the power cuts and full disks this run needs: %v", err)
	}
	t.Log(rep)
	if err != nil {
		for _, s := range rep.Schedule {
			t.Log(s)
		}
		t.Fatalf("seed %d: %v (replay: CHAOS_SEED=%d go test -run TestChaosShort ./internal/chaos)", seed, err, seed)
	}
	for _, f := range faults {
		if rep.Faults[f.kind] == 0 {
			t.Fatalf("fault %s never ran", f.kind)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// The checker is not vacuous: a byte of proxy A's stored stream changed
// at rest is reported as a divergence.
func TestCheckerFindsDivergence(t *testing.T) {
	if err := redistest.Available(); err != nil {
		t.Fatal(err)
	}
	w, err := build(Config{Seed: 1, Dir: t.TempDir(), ProxyBin: redistest.ProxyBinary(t), Log: testWriter{t}})
	if errors.Is(err, lazyfs.ErrUnavailable) {
		t.Skipf("no FUSE here: %v", err)
	}
	if w != nil {
		defer w.close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := waitFor(time.Minute, func() bool { return w.converged(w.origin) }); err != nil {
		t.Fatal(err)
	}
	w.ledger.settle(w.fullSyncs()) // the first syncs need no fault
	w.load.run()
	if err := waitFor(time.Minute, func() bool {
		m, err := infoAt(w.proxies[0].addr, "replication")
		return err == nil && infoInt(m, "master_repl_offset") > 1<<20
	}); err != nil {
		t.Fatal(err)
	}
	if found := w.check(); len(found) > 0 {
		t.Fatalf("findings before any fault: %v", found)
	}
	a := w.proxies[0]
	a.kill()
	seg := lastSegment(t, filepath.Join(a.fs.Mountpoint, "data", "backlog"))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndex(b[:len(b)/2], []byte("lua:n"))
	if i < 0 {
		t.Fatalf("no lua:n key in the first half of %s", seg)
	}
	b[i+4] = 'm' // a key name changed: the stream still parses
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	a.checked = 0
	found := w.check()
	for _, f := range found {
		if strings.Contains(f, "DIVERGENCE: proxy A") {
			return
		}
	}
	t.Fatalf("a changed byte of proxy A's stream was not found: %v", found)
}

func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".seg") {
			last = filepath.Join(dir, e.Name())
		}
	}
	if last == "" {
		t.Fatalf("no segment in %s", dir)
	}
	return last
}

// The ledger: a full sync a fault allowed is settled once; any other is
// reported; allowances do not carry over a check.
func TestLedger(t *testing.T) {
	l := newLedger()
	if got := l.settle(map[string]int{"replica0": 1, "proxyA": 1}); len(got) != 2 {
		t.Fatalf("first settle: %v", got)
	}
	l.allow("replica0", "restarted")
	if got := l.settle(map[string]int{"replica0": 2, "proxyA": 1}); len(got) != 0 {
		t.Fatalf("an allowed full sync was reported: %v", got)
	}
	l.allow("replica0", "restarted")
	if got := l.settle(map[string]int{"replica0": 2, "proxyA": 2}); len(got) != 1 || !strings.Contains(got[0], "proxyA") {
		t.Fatalf("an unexplained full sync: %v", got)
	}
	if got := l.settle(map[string]int{"replica0": 3, "proxyA": 2}); len(got) != 1 {
		t.Fatalf("an allowance carried over a check: %v", got)
	}
}
