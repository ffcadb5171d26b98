// Package handoff is what the command surface hands the replica side when
// SYNC or PSYNC makes a client connection a replica link: the connection
// and what the session knows of it. A leaf: it holds no state, starts no
// goroutine and takes no lock.
package handoff

import (
	"bufio"
	"context"
	"log/slog"
	"net"

	"github.com/replproxy/replproxy/proxy/vocab"
)

// Announce is what a replica says of itself with REPLCONF before PSYNC.
type Announce struct {
	ListeningPort int
	IPAddress     string
	CapaPsync2    bool
	CapaEOF       bool
	RDBOnly       bool
	FilterAll     bool // rdb-filter-only "": an empty RDB, then the stream from now
	// FilterFunctions: rdb-filter-only functions, the snapshot's function
	// libraries only (redis-cli --functions-rdb).
	FilterFunctions bool
	Version         string // REPLCONF version: only Valkey 8+ announce one
}

// Link is a client connection the command surface hands to the
// replica side when SYNC or PSYNC makes it a replica link: what the
// session knows of it, and how to answer and end it as the session does.
type Link struct {
	ID       int64
	Conn     net.Conn // *tls.Conn on the TLS listener
	Raw      net.Conn // the TCP connection under Conn
	Reader   *bufio.Reader
	Addr     string // the peer
	TLS      bool
	Delayed  bool // on --delayed-listen
	Log      *slog.Logger
	Ctx      context.Context // ends with the session
	Identity vocab.Identity  // who the session authenticated as
	Announce Announce
	// Errorf answers an error reply as the session counts them;
	// EndSession closes the session's connection (once).
	Errorf     func(format string, a ...any) error
	EndSession func(reason vocab.DisconnectReason)
}
