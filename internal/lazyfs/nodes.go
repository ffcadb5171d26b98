package lazyfs

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const pageSize = 4096

// file is one regular file: its synced bytes in the backing data file,
// pages written since the last fsync in memory.
type file struct {
	mu     sync.Mutex
	ino    uint64
	path   string           // backing data file
	size   int64            // as the mount shows it
	synced int64            // the backing data file's size
	trunc  int64            // smallest size since the last fsync (the backing file is cut there first)
	dirty  map[int64][]byte // page index -> page
	mode   uint32
	mtime  time.Time
}

func (f *file) readPage(idx int64) ([]byte, error) {
	if p, ok := f.dirty[idx]; ok {
		return p, nil
	}
	p := make([]byte, pageSize)
	off := idx * pageSize
	if off < min(f.synced, f.trunc) {
		bf, err := os.Open(f.path)
		if err != nil {
			return nil, err
		}
		defer bf.Close()
		n, err := bf.ReadAt(p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		// bytes the backing file has past a truncation since are gone
		if lim := min(f.synced, f.trunc) - off; int64(n) > lim {
			clear(p[lim:])
		}
	}
	return p, nil
}

func (f *file) read(dest []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, nil
	}
	n := int(min(int64(len(dest)), f.size-off))
	done := 0
	for done < n {
		at := off + int64(done)
		p, err := f.readPage(at / pageSize)
		if err != nil {
			return done, err
		}
		done += copy(dest[done:n], p[at%pageSize:])
	}
	return n, nil
}

func (f *file) write(data []byte, off int64) error {
	done := 0
	for done < len(data) {
		at := off + int64(done)
		idx := at / pageSize
		p, err := f.readPage(idx)
		if err != nil {
			return err
		}
		f.dirty[idx] = p
		done += copy(p[at%pageSize:], data[done:])
	}
	f.size = max(f.size, off+int64(len(data)))
	f.mtime = time.Now()
	return nil
}

func (f *file) truncate(size int64) {
	for idx, p := range f.dirty {
		switch start := idx * pageSize; {
		case start >= size:
			delete(f.dirty, idx)
		case start+pageSize > size:
			clear(p[size-start:])
		}
	}
	if size < f.size {
		f.trunc = min(f.trunc, size)
	}
	f.size = size
	f.mtime = time.Now()
}

// sync writes the dirty pages to the backing file and fsyncs it.
func (f *file) sync() error {
	bf, err := os.OpenFile(f.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer bf.Close()
	if f.trunc < f.synced {
		if err := bf.Truncate(f.trunc); err != nil {
			return err
		}
	}
	for idx, p := range f.dirty {
		start := idx * pageSize
		if start >= f.size {
			continue
		}
		if _, err := bf.WriteAt(p[:min(pageSize, f.size-start)], start); err != nil {
			return err
		}
	}
	if err := bf.Truncate(f.size); err != nil {
		return err
	}
	if err := bf.Sync(); err != nil {
		return err
	}
	f.dirty = map[int64][]byte{}
	f.synced, f.trunc = f.size, f.size
	return nil
}

func (l *FS) newFile(ino uint64, mode uint32) *file {
	f := &file{ino: ino, path: l.dataPath(ino), dirty: map[int64][]byte{}, mode: mode, mtime: time.Now()}
	if st, err := os.Stat(f.path); err == nil {
		f.size, f.synced, f.mtime = st.Size(), st.Size(), st.ModTime()
	}
	f.trunc = f.synced
	l.files[ino] = f
	return f
}

// populate adds the durable tree under dir to the mount.
func (l *FS) populate(ctx context.Context, dir *fs.Inode, ino uint64) {
	for name, e := range l.durable.Dirs[ino] {
		var child *fs.Inode
		if e.Dir {
			n := &dirNode{l: l, ino: e.Ino}
			child = dir.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: e.Ino})
			l.populate(ctx, child, e.Ino)
		} else {
			l.newFile(e.Ino, 0o644)
			child = dir.NewPersistentInode(ctx, &fileNode{l: l, ino: e.Ino}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: e.Ino})
		}
		dir.AddChild(name, child, true)
	}
}

// dirNode is a directory; its entries are go-fuse's children of its
// inode, which the bridge updates after each create, unlink and rename.
type dirNode struct {
	fs.Inode
	l   *FS
	ino uint64
}

var (
	_ fs.NodeMkdirer   = (*dirNode)(nil)
	_ fs.NodeCreater   = (*dirNode)(nil)
	_ fs.NodeUnlinker  = (*dirNode)(nil)
	_ fs.NodeRmdirer   = (*dirNode)(nil)
	_ fs.NodeRenamer   = (*dirNode)(nil)
	_ fs.NodeFsyncer   = (*dirNode)(nil)
	_ fs.NodeGetattrer = (*dirNode)(nil)
	_ fs.NodeStatfser  = (*dirNode)(nil)
)

func (d *dirNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Ino = d.ino
	return 0
}

func (d *dirNode) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.l.backing, &st); err != nil {
		return fs.ToErrno(err)
	}
	if d.l.full.Load() {
		st.Bfree, st.Bavail = 0, 0
	}
	out.FromStatfsT(&st)
	return 0
}

func (d *dirNode) allocIno() uint64 {
	d.l.mu.Lock()
	defer d.l.mu.Unlock()
	ino := d.l.nextIno
	d.l.nextIno++
	return ino
}

func (d *dirNode) Mkdir(ctx context.Context, name string, _ uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if d.l.full.Load() {
		return nil, syscall.ENOSPC
	}
	if d.GetChild(name) != nil {
		return nil, syscall.EEXIST
	}
	ino := d.allocIno()
	out.Mode = syscall.S_IFDIR | 0o755
	return d.NewPersistentInode(ctx, &dirNode{l: d.l, ino: ino}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino}), 0
}

func (d *dirNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if d.l.full.Load() {
		return nil, nil, 0, syscall.ENOSPC
	}
	if d.GetChild(name) != nil {
		return nil, nil, 0, syscall.EEXIST
	}
	ino := d.allocIno()
	d.l.mu.Lock()
	f := d.l.newFile(ino, mode&0o777)
	d.l.mu.Unlock()
	_ = os.Remove(f.path) // an inode number is never reused, but a stale file would be read
	f.size, f.synced, f.trunc = 0, 0, 0
	n := &fileNode{l: d.l, ino: ino}
	out.Mode = syscall.S_IFREG | mode&0o777
	return d.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino}), nil, fuse.FOPEN_DIRECT_IO, 0
}

func (d *dirNode) Unlink(context.Context, string) syscall.Errno { return 0 }

func (d *dirNode) Rmdir(_ context.Context, name string) syscall.Errno {
	if ch := d.GetChild(name); ch != nil && len(ch.Children()) > 0 {
		return syscall.ENOTEMPTY
	}
	return 0
}

func (d *dirNode) Rename(_ context.Context, _ string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if flags != 0 {
		return syscall.EINVAL // RENAME_NOREPLACE / EXCHANGE: not needed here
	}
	if ch := newParent.EmbeddedInode().GetChild(newName); ch != nil && len(ch.Children()) > 0 {
		return syscall.ENOTEMPTY
	}
	return 0
}

// Fsync on a directory makes its entries durable.
func (d *dirNode) Fsync(context.Context, fs.FileHandle, uint32) syscall.Errno {
	children := d.Children()
	d.l.mu.Lock()
	defer d.l.mu.Unlock()
	return fs.ToErrno(d.l.syncDirLocked(d.ino, children))
}

// fileNode is a regular file.
type fileNode struct {
	fs.Inode
	l   *FS
	ino uint64
}

var (
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeReader    = (*fileNode)(nil)
	_ fs.NodeWriter    = (*fileNode)(nil)
	_ fs.NodeFsyncer   = (*fileNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeSetattrer = (*fileNode)(nil)
	_ fs.NodeFlusher   = (*fileNode)(nil)
)

func (n *fileNode) file() *file {
	n.l.mu.Lock()
	defer n.l.mu.Unlock()
	return n.l.files[n.ino]
}

// Open asks the kernel not to cache the file's pages: reads and writes all
// come here, so what readers see is what this file system holds. (With
// the page cache, and attributes never cached, readers of a file being
// appended to saw zeros where bytes had been written: a size from a
// GETATTR racing a WRITE.)
func (n *fileNode) Open(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *fileNode) Flush(context.Context, fs.FileHandle) syscall.Errno { return 0 }

func (n *fileNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f := n.file()
	f.mu.Lock()
	defer f.mu.Unlock()
	out.Mode = syscall.S_IFREG | f.mode
	out.Size = uint64(f.size)
	out.Ino = n.ino
	out.SetTimes(nil, &f.mtime, &f.mtime)
	out.Blocks = (uint64(f.size) + 511) / 512
	return 0
}

func (n *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f := n.file()
	f.mu.Lock()
	if sz, ok := in.GetSize(); ok {
		f.truncate(int64(sz))
	}
	if m, ok := in.GetMode(); ok {
		f.mode = m & 0o777
	}
	if mt, ok := in.GetMTime(); ok {
		f.mtime = mt
	}
	f.mu.Unlock()
	return n.Getattr(ctx, fh, out)
}

func (n *fileNode) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f := n.file()
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.read(dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:m]), 0
}

func (n *fileNode) Write(_ context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if d := time.Duration(n.l.writeDelay.Load()); d > 0 {
		time.Sleep(d) // the slow disk SetWriteDelay asks for
	}
	if n.l.full.Load() {
		return 0, syscall.ENOSPC
	}
	f := n.file()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.write(data, off); err != nil {
		return 0, fs.ToErrno(err)
	}
	return uint32(len(data)), 0
}

// Fsync on a file makes its bytes durable (not its directory entry).
func (n *fileNode) Fsync(context.Context, fs.FileHandle, uint32) syscall.Errno {
	f := n.file()
	f.mu.Lock()
	defer f.mu.Unlock()
	return fs.ToErrno(f.sync())
}
