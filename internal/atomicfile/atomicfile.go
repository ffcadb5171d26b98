// Package atomicfile replaces files so that a crash leaves either the old
// or the new content, never a mix: write a temp file beside the target,
// fsync it, rename it over the target, fsync the directory. The state
// file, the backlog's tag and the full-sync backoff use it; snapshots use
// SyncDir after their own rename.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// SyncFunc fsyncs a file; nil means (*os.File).Sync. Tests pass hooks to
// hold or fail fsyncs.
type SyncFunc func(*os.File) error

func (s SyncFunc) sync(f *os.File) error {
	if s == nil {
		return f.Sync()
	}
	return s(f)
}

// Write replaces path with data.
func Write(path string, data []byte, sync SyncFunc) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		err = sync.sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path), sync)
}

// SyncDir fsyncs a directory, making renames and removals in it durable.
func SyncDir(dir string, sync SyncFunc) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := sync.sync(d); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// MkdirAll is os.MkdirAll that makes each directory it creates durable:
// it is fsynced into its parent, so that a power loss cannot take it away
// with everything later written (and fsynced) under it.
func MkdirAll(dir string, perm os.FileMode, sync SyncFunc) error {
	dir = filepath.Clean(dir)
	if st, err := os.Stat(dir); err == nil {
		if st.IsDir() {
			return nil
		}
		return &os.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := MkdirAll(parent, perm, sync); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, perm); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	return SyncDir(parent, sync)
}
