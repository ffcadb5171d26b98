package proxy

import (
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/backlog"
)

// Test hooks: the few views of a running proxy that tests read beyond its
// public surface (Status, Stats, INFO).

// backlogLog is the proxy's backlog, for tests that compare its bytes with
// the origin's stream.
func (p *Proxy) backlogLog() *backlog.Log { return p.store.Backlog }

// backlogEnd is master_repl_offset.
func (p *Proxy) backlogEnd() int64 { return p.store.Backlog.End() }

// linkUp reports whether the upstream link is streaming.
func (p *Proxy) linkUp() bool { return p.follower.LinkUp() }

// refreshing reports whether a snapshot refresh is running.
func (p *Proxy) refreshing() bool { return p.follower.Refreshing() }

// moveUpstream is REPLICAOF host:port.
func (p *Proxy) moveUpstream(addr string) bool { return p.MoveUpstream(addr) }

// closeSessions disconnects replicas as a history change does.
func (p *Proxy) closeSessions(reason vocab.DisconnectReason) int { return p.down.CloseReplicas(reason) }

// dropTrimmedReplicas runs the trim check.
func (p *Proxy) dropTrimmedReplicas() { p.down.DropTrimmedReplicas() }

// info is INFO's reply.
func (p *Proxy) info(sections ...string) string { return p.srv.Info(sections...) }
