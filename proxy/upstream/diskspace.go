package upstream

import (
	"fmt"
	"os"

	"github.com/replproxy/replproxy/proxy/vocab"
	"golang.org/x/sys/unix"
)

// spaceMargin is kept free beyond a snapshot's size: room for the
// backlog's next segment and the state files while the snapshot lands.
const spaceMargin = 4 << 20

// spaceNeeded is the free space a snapshot of size bytes needs: its size,
// 10% for a dataset that grew since it was measured, and the margin.
func spaceNeeded(size int64) int64 { return size + size/10 + spaceMargin }

// freeBytes is the space an unprivileged writer has left on dir's
// filesystem.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// diskCheck says why a snapshot of about size bytes cannot be received
// into the data dir now, "" when it can. probe also writes, syncs and
// removes a small file, for causes free space does not show (read-only,
// permissions, I/O errors).
func (s *fullSyncer) diskCheck(size int64, probe bool) string {
	f := s.f
	free, err := freeBytes(f.cfg.DataDir)
	if err != nil {
		return vocab.BlockedDataDir + ": " + err.Error()
	}
	// Stream in the intake buffer is about to take space as well.
	v := f.store.Backlog.View()
	free -= max(v.End-v.Flushed, 0)
	if need := spaceNeeded(size); free < need {
		return fmt.Sprintf("%s: a snapshot needs about %s (last known size %s), the data dir has %s free",
			vocab.BlockedDiskFull, humanBytes(need), humanBytes(size), humanBytes(free))
	}
	if probe {
		if err := probeWritable(f.cfg.DataDir); err != nil {
			return vocab.BlockedDataDir + ": " + err.Error()
		}
	}
	return ""
}

// probeWritable writes, syncs and removes a small file in dir.
func probeWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(make([]byte, 4096))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
