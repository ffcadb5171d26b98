package lazyfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func mountT(t *testing.T) *FS {
	t.Helper()
	l, err := Mount(t.TempDir(), filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no FUSE here, so no power cuts to simulate: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func writeFile(t *testing.T, path string, data []byte, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path string, data []byte, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func syncDir(t *testing.T, dir string) {
	t.Helper()
	if err := syncPath(dir); err != nil {
		t.Fatal(err)
	}
}

func cut(t *testing.T, l *FS) {
	t.Helper()
	if err := l.PowerCut(); err != nil {
		t.Fatal(err)
	}
}

func content(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Synced bytes survive a power cut; bytes written after the last fsync
// do not, whether appended or overwritten.
func TestSyncedSurvivesUnsyncedLost(t *testing.T) {
	l := mountT(t)
	p := filepath.Join(l.Mountpoint, "seg")
	synced := bytes.Repeat([]byte("s"), 10000) // pages and a partial page
	writeFile(t, p, synced, true)
	syncDir(t, l.Mountpoint)
	appendFile(t, p, []byte("lost"), false)
	if got := content(t, p); len(got) != len(synced)+4 {
		t.Fatalf("before the cut the mount shows %d bytes", len(got))
	}
	cut(t, l)
	if got := content(t, p); !bytes.Equal(got, synced) {
		t.Fatalf("after the cut: %d bytes, want the %d synced", len(got), len(synced))
	}
	appendFile(t, p, []byte("kept"), true)
	cut(t, l)
	if got := content(t, p); !bytes.Equal(got, append(synced, "kept"...)) {
		t.Fatalf("an fsynced append was lost: %d bytes", len(got))
	}
	if l.Cuts() != 2 {
		t.Fatalf("cuts %d", l.Cuts())
	}
}

// A file whose directory was not fsynced after its creation is gone after
// a cut, even with its data synced; with the directory synced it stays.
func TestCreateNeedsDirectoryFsync(t *testing.T) {
	l := mountT(t)
	sub := filepath.Join(l.Mountpoint, "backlog")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	syncDir(t, l.Mountpoint)
	writeFile(t, filepath.Join(sub, "a"), []byte("a"), true)
	syncDir(t, sub)
	writeFile(t, filepath.Join(sub, "b"), []byte("b"), true)
	cut(t, l)
	if got := content(t, filepath.Join(sub, "a")); string(got) != "a" {
		t.Fatalf("a: %q", got)
	}
	if _, err := os.Stat(filepath.Join(sub, "b")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("b, created without a directory fsync, survived the cut: %v", err)
	}
}

// The atomic-replace pattern: a rename without a directory fsync is lost
// at a cut (the old content is back); with one it stays. An unsynced
// unlink is undone the same way.
func TestRenameAndUnlinkNeedDirectoryFsync(t *testing.T) {
	l := mountT(t)
	state := filepath.Join(l.Mountpoint, "state")
	writeFile(t, state, []byte("old"), true)
	syncDir(t, l.Mountpoint)

	writeFile(t, state+".tmp", []byte("new"), true)
	if err := os.Rename(state+".tmp", state); err != nil {
		t.Fatal(err)
	}
	cut(t, l)
	if got := content(t, state); string(got) != "old" {
		t.Fatalf("a rename without a directory fsync survived: %q", got)
	}

	writeFile(t, state+".tmp", []byte("new"), true)
	if err := os.Rename(state+".tmp", state); err != nil {
		t.Fatal(err)
	}
	syncDir(t, l.Mountpoint)
	cut(t, l)
	if got := content(t, state); string(got) != "new" {
		t.Fatalf("a synced rename was lost: %q", got)
	}
	if _, err := os.Stat(state + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the renamed file is still under its old name: %v", err)
	}

	if err := os.Remove(state); err != nil {
		t.Fatal(err)
	}
	cut(t, l)
	if got := content(t, state); string(got) != "new" {
		t.Fatalf("after an unsynced unlink and a cut: %q", got)
	}
	if err := os.Remove(state); err != nil {
		t.Fatal(err)
	}
	syncDir(t, l.Mountpoint)
	cut(t, l)
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a synced unlink was undone: %v", err)
	}
}

// A truncation is durable only with an fsync, like any write.
func TestTruncateNeedsFsync(t *testing.T) {
	l := mountT(t)
	p := filepath.Join(l.Mountpoint, "seg")
	data := bytes.Repeat([]byte("t"), 3*pageSize+100)
	writeFile(t, p, data, true)
	syncDir(t, l.Mountpoint)
	if err := os.Truncate(p, 100); err != nil {
		t.Fatal(err)
	}
	if got := content(t, p); len(got) != 100 {
		t.Fatalf("truncated file shows %d bytes", len(got))
	}
	cut(t, l)
	if got := content(t, p); !bytes.Equal(got, data) {
		t.Fatalf("an unsynced truncation survived: %d bytes", len(got))
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(pageSize + 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("xy"), pageSize+1); err != nil { // regrows over the cut bytes
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cut(t, l)
	want := append(append([]byte{}, data[:pageSize+1]...), "xy"...)
	if got := content(t, p); !bytes.Equal(got, want) {
		t.Fatalf("after a synced truncate and write: %d bytes, want %d", len(got), len(want))
	}
}

// A full file system refuses writes and creates with ENOSPC, and says so
// in statfs, until it is not full.
func TestFull(t *testing.T) {
	l := mountT(t)
	p := filepath.Join(l.Mountpoint, "f")
	writeFile(t, p, []byte("a"), true)
	l.SetFull(true)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("b")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full file system: %v", err)
	}
	f.Close()
	if _, err := os.Create(filepath.Join(l.Mountpoint, "g")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("create on a full file system: %v", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(l.Mountpoint, &st); err != nil || st.Bavail != 0 {
		t.Fatalf("statfs on a full file system: %v, %d blocks available", err, st.Bavail)
	}
	l.SetFull(false)
	appendFile(t, p, []byte("b"), true)
	if got := content(t, p); string(got) != "ab" {
		t.Fatalf("after the disk had room again: %q", got)
	}
}
