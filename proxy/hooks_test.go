package proxy

import "github.com/replproxy/replproxy/psync/backlog"

// Test hooks: the few views of a running proxy that tests read beyond its
// public surface (Status, Stats, INFO).

// backlogLog is the proxy's backlog, for tests that compare its bytes with
// the origin's stream.
func (p *Proxy) backlogLog() *backlog.Log { return p.store.bl }

// backlogEnd is master_repl_offset.
func (p *Proxy) backlogEnd() int64 { return p.store.bl.End() }

// snapshotDir is where the snapshot files are.
func (p *Proxy) snapshotDir() string { return p.store.snapDir }
