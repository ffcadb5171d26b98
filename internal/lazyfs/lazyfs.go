// Package lazyfs is a FUSE file system for tests that loses, at a
// simulated power cut, everything that was not fsynced: file data written
// since the file's last fsync, and directory entries (creates, renames,
// unlinks) made since the directory's last fsync. It plays the part of
// etcd's LazyFS for replproxy's data dir.
//
// What is durable lives in a backing directory: each file's synced bytes
// in data/<inode>, and the synced directory tree in tree.json. What is not
// lives in memory: each file's pages written since its last fsync, and the
// tree as the mount shows it. PowerCut unmounts, forgets the memory and
// mounts the durable state again.
package lazyfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ErrUnavailable: this machine cannot mount FUSE file systems (no
// /dev/fuse, or not allowed to mount).
var ErrUnavailable = errors.New("lazyfs: FUSE is not available here")

// FS is a mounted lazy file system.
type FS struct {
	Mountpoint string
	backing    string

	mu      sync.Mutex
	server  *fuse.Server
	files   map[uint64]*file // by inode, every file the mount shows
	durable tree             // the directory tree as the last fsyncs left it
	nextIno uint64
	cuts    int
	// writeDelay is added to every write request: a slow disk.
	writeDelay atomic.Int64
	full       atomic.Bool // writes and creates fail with ENOSPC
}

// SetFull makes the file system full (writes, creates and mkdirs fail
// with ENOSPC) or not.
func (l *FS) SetFull(full bool) { l.full.Store(full) }

// SetWriteDelay makes every write request take at least d longer, as a
// slow disk would (the kernel sends at most 128 KB per request).
func (l *FS) SetWriteDelay(d time.Duration) { l.writeDelay.Store(int64(d)) }

// tree is the durable directory tree: each directory's entries by inode.
type tree struct {
	Dirs    map[uint64]map[string]entry `json:"dirs"`
	NextIno uint64                      `json:"next_ino"`
}

type entry struct {
	Ino uint64 `json:"ino"`
	Dir bool   `json:"dir"`
}

const rootIno = 1

// Mount mounts a lazy file system at mountpoint whose durable state lives
// in backing (created empty if missing).
func Mount(backing, mountpoint string) (*FS, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := os.MkdirAll(filepath.Join(backing, "data"), 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return nil, err
	}
	l := &FS{Mountpoint: mountpoint, backing: backing}
	if err := l.load(); err != nil {
		return nil, err
	}
	if err := l.mount(); err != nil {
		return nil, err
	}
	return l, nil
}

// load reads the durable tree (an empty root when there is none).
func (l *FS) load() error {
	l.durable = tree{Dirs: map[uint64]map[string]entry{rootIno: {}}, NextIno: rootIno + 1}
	b, err := os.ReadFile(l.treePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	if err := json.Unmarshal(b, &l.durable); err != nil {
		return fmt.Errorf("lazyfs: %s: %w", l.treePath(), err)
	}
	return nil
}

func (l *FS) treePath() string { return filepath.Join(l.backing, "tree.json") }

func (l *FS) dataPath(ino uint64) string {
	return filepath.Join(l.backing, "data", strconv.FormatUint(ino, 10))
}

// mount builds the mount's tree from the durable one and serves it.
func (l *FS) mount() error {
	l.files = map[uint64]*file{}
	l.nextIno = l.durable.NextIno
	root := &dirNode{l: l, ino: rootIno}
	var timeout time.Duration // no kernel caching of entries or attributes: the tree changes at a cut
	opts := &fs.Options{
		EntryTimeout: &timeout, AttrTimeout: &timeout, NegativeTimeout: &timeout,
		MountOptions: fuse.MountOptions{FsName: "lazyfs", Name: "lazyfs", DirectMountStrict: true, DisableXAttrs: true},
		OnAdd:        func(ctx context.Context) { l.populate(ctx, &root.Inode, rootIno) },
	}
	server, err := fs.Mount(l.Mountpoint, root, opts)
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return fmt.Errorf("lazyfs: mount %s: %w", l.Mountpoint, err)
	}
	l.server = server
	return nil
}

// PowerCut loses everything not fsynced, as a machine losing power does:
// the caller has stopped every process using the mount (a SIGKILL is
// enough). The mount is back, with the durable state, when it returns.
func (l *FS) PowerCut() error {
	if err := l.unmount(); err != nil {
		return err
	}
	l.mu.Lock()
	l.cuts++
	err := l.load()
	l.mu.Unlock()
	if err != nil {
		return err
	}
	l.dropUnreferenced()
	return l.mount()
}

// Unmount unmounts, leaving the durable state in the backing directory.
func (l *FS) Unmount() error { return l.unmount() }

func (l *FS) unmount() error {
	if l.server == nil {
		return nil
	}
	var err error
	for range 50 { // a process that just died may still hold files for a moment
		if err = l.server.Unmount(); err == nil {
			l.server.Wait()
			l.server = nil
			return nil
		}
		time.Sleep(100 * time.Millisecond) // unmount retry pace
	}
	return fmt.Errorf("lazyfs: unmount %s: %w", l.Mountpoint, err)
}

// Cuts is how many power cuts this mount has had.
func (l *FS) Cuts() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cuts
}

// dropUnreferenced removes backing data of inodes the durable tree no
// longer names (files whose unlink was synced).
func (l *FS) dropUnreferenced() {
	named := map[string]bool{}
	for _, ents := range l.durable.Dirs {
		for _, e := range ents {
			if !e.Dir {
				named[strconv.FormatUint(e.Ino, 10)] = true
			}
		}
	}
	ents, err := os.ReadDir(filepath.Join(l.backing, "data"))
	if err != nil {
		return
	}
	for _, e := range ents {
		if !named[e.Name()] {
			_ = os.Remove(filepath.Join(l.backing, "data", e.Name()))
		}
	}
}

// syncDir makes dir's entries as the mount shows them durable. Called
// with l.mu held.
func (l *FS) syncDirLocked(ino uint64, children map[string]*fs.Inode) error {
	ents := map[string]entry{}
	for name, ch := range children {
		switch n := ch.Operations().(type) {
		case *dirNode:
			ents[name] = entry{Ino: n.ino, Dir: true}
			if _, ok := l.durable.Dirs[n.ino]; !ok {
				l.durable.Dirs[n.ino] = map[string]entry{}
			}
		case *fileNode:
			ents[name] = entry{Ino: n.ino}
		}
	}
	l.durable.Dirs[ino] = ents
	l.durable.NextIno = max(l.durable.NextIno, l.nextIno)
	b, err := json.Marshal(l.durable)
	if err != nil {
		return err
	}
	tmp := l.treePath() + ".tmp"
	if err := writeSynced(tmp, b); err != nil {
		return err
	}
	if err := os.Rename(tmp, l.treePath()); err != nil {
		return err
	}
	return syncPath(l.backing)
}

func writeSynced(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
