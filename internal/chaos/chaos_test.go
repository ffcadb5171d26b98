package chaos

import (
	"errors"
	"os"
	"strconv"
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
