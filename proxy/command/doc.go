// Package command is replproxy's Redis command surface: the listeners
// (plain, TLS, delayed), the client sessions on them (the socket loop,
// MULTI, AUTH and HELLO, REPLCONF, REPLICAOF, REPLPROXY GUARD, CLIENT,
// pub/sub), one command table, INFO rendered per section from a status
// value, ROLE, CONFIG, LATENCY, SLOWLOG and command statistics. A session
// that sends SYNC or PSYNC is handed to the downstream as a replica.
//
// It sees the rest of the proxy only through the interfaces it declares:
// Daemon (a status value, REPLICAOF, the guard's accept) and Replicas
// (which takes a connection at SYNC/PSYNC); it depends on no other
// component.
//
// # Goroutines
//
// Serve runs one accept loop per listener and joins them; each accept loop
// runs one goroutine per session and joins them all before it returns. A
// session in pub/sub mode has a writer (package pubsub), joined when the
// session ends. At shutdown Serve closes the listeners and every session
// and returns once all have ended.
//
// # Locks
//
// Server.mu guards the session set (sessions are closed after it is
// released); the command statistics' mu their counters. A session's
// fields are its goroutine's, apart from the atomic ones other sessions
// read for CLIENT LIST and CLIENT KILL.
package command
