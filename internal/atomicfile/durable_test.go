package atomicfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/internal/lazyfs"
)

// Regression (found by the power-cut test): directories the data dir
// needs were created without an fsync of their parents, so a power cut
// soon after the first start took the whole data dir. MkdirAll's
// directories, and a file written under them with Write, survive a cut;
// os.MkdirAll's do not.
func TestMkdirAllSurvivesPowerCut(t *testing.T) {
	l, err := lazyfs.Mount(t.TempDir(), filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, lazyfs.ErrUnavailable) {
		t.Skipf("no FUSE here, so no power cuts to simulate: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unmount()
	durable := filepath.Join(l.Mountpoint, "data", "backlog")
	if err := atomicfile.MkdirAll(durable, 0o755, nil); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(filepath.Join(durable, "TAG"), []byte("t\n"), nil); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(l.Mountpoint, "plain", "backlog")
	if err := os.MkdirAll(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(filepath.Join(plain, "TAG"), []byte("t\n"), nil); err != nil {
		t.Fatal(err)
	}
	if err := l.PowerCut(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(durable, "TAG")); err != nil || string(b) != "t\n" {
		t.Fatalf("after the cut: %q, %v", b, err)
	}
	if _, err := os.Stat(plain); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a directory made without a parent fsync survived the cut (%v): the file system does not model the loss this test is about", err)
	}
	if err := atomicfile.MkdirAll(durable, 0o755, nil); err != nil { // exists: nothing to do
		t.Fatal(err)
	}
}
