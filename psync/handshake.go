package psync

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// MaxReplyLine is how much of a handshake or PSYNC reply line is kept: an
// error reply reaches the logs as the master wrote it (Redis' protected-mode
// -DENIED text is ~600 bytes), cut only past this.
const MaxReplyLine = 4096

// EncodeCommand encodes args as a RESP multibulk.
func EncodeCommand(args ...string) []byte {
	b := make([]byte, 0, 16*len(args)+16)
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// AckCommand is "REPLCONF ACK <offset>".
func AckCommand(offset int64) []byte {
	return EncodeCommand("REPLCONF", "ACK", strconv.FormatInt(offset, 10))
}

// HandshakeConfig is what a replica tells its master before PSYNC.
type HandshakeConfig struct {
	User          string // ACL user; empty for the default user
	Password      string // empty: no AUTH
	ListeningPort int    // REPLCONF listening-port; 0 skips it
	IPAddress     string // REPLCONF ip-address; empty skips it
	RDBOnly       bool   // REPLCONF rdb-only 1: a snapshot and nothing else
	// Version is sent as REPLCONF version (Valkey 8+ replicas do; a
	// Valkey 9 master picks the RDB version it writes from it). Empty: not
	// sent. A master that does not know it answers an error, tolerated.
	Version string
}

// HandshakeError is a reply that ends the handshake attempt.
type HandshakeError struct {
	Step  string
	Reply string
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("psync: %s refused by master: %s", e.Step, e.Reply)
}

// ErrRDBOnlyRefused means the master does not know REPLCONF rdb-only.
var ErrRDBOnlyRefused = &HandshakeError{Step: "REPLCONF rdb-only", Reply: "refused"}

// Handshake runs the replica side up to (not including) PSYNC, reading each
// reply before sending the next command, and tolerating the errors a stock
// replica tolerates (replication.c:syncWithMaster()).
func Handshake(w io.Writer, br *bufio.Reader, cfg HandshakeConfig) error {
	ask := func(step string, cmd []byte) (string, error) {
		if _, err := w.Write(cmd); err != nil {
			return "", fmt.Errorf("psync: send %s: %w", step, err)
		}
		line, err := ReadLine(br, MaxReplyLine)
		if err != nil {
			return "", fmt.Errorf("psync: read %s reply: %w", step, err)
		}
		return line, nil
	}
	line, err := ask("PING", EncodeCommand("PING"))
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+") && !strings.HasPrefix(line, "-NOAUTH") &&
		!strings.HasPrefix(line, "-NOPERM") && !strings.HasPrefix(line, "-ERR operation not permitted") {
		return &HandshakeError{Step: "PING", Reply: line}
	}
	if cfg.Password != "" {
		cmd := EncodeCommand("AUTH", cfg.Password)
		if cfg.User != "" {
			cmd = EncodeCommand("AUTH", cfg.User, cfg.Password)
		}
		if line, err = ask("AUTH", cmd); err != nil {
			return err
		}
		if strings.HasPrefix(line, "-") {
			return &HandshakeError{Step: "AUTH", Reply: line}
		}
	}
	if cfg.ListeningPort > 0 {
		// Errors here are "non critical" for a stock replica too.
		if _, err = ask("REPLCONF listening-port", EncodeCommand("REPLCONF", "listening-port", strconv.Itoa(cfg.ListeningPort))); err != nil {
			return err
		}
	}
	if cfg.IPAddress != "" {
		if _, err = ask("REPLCONF ip-address", EncodeCommand("REPLCONF", "ip-address", cfg.IPAddress)); err != nil {
			return err
		}
	}
	if _, err = ask("REPLCONF capa", EncodeCommand("REPLCONF", "capa", "eof", "capa", "psync2")); err != nil {
		return err
	}
	if cfg.Version != "" {
		if _, err = ask("REPLCONF version", EncodeCommand("REPLCONF", "version", cfg.Version)); err != nil {
			return err
		}
	}
	if cfg.RDBOnly {
		if line, err = ask("REPLCONF rdb-only", EncodeCommand("REPLCONF", "rdb-only", "1")); err != nil {
			return err
		}
		if strings.HasPrefix(line, "-") {
			return ErrRDBOnlyRefused
		}
	}
	return nil
}

// Psync sends "PSYNC id offset" (or "PSYNC ? -1" when id is empty) and parses
// the reply, skipping keepalive newlines.
func Psync(w io.Writer, br *bufio.Reader, id string, offset int64, onKeepalive func()) (PsyncReply, error) {
	cmd := EncodeCommand("PSYNC", "?", "-1")
	if id != "" {
		cmd = EncodeCommand("PSYNC", id, strconv.FormatInt(offset, 10))
	}
	if _, err := w.Write(cmd); err != nil {
		return PsyncReply{}, fmt.Errorf("psync: send PSYNC: %w", err)
	}
	line, err := ReadReplyLine(br, MaxReplyLine, onKeepalive)
	if err != nil {
		return PsyncReply{}, fmt.Errorf("psync: read PSYNC reply: %w", err)
	}
	return ParsePsyncReply(line)
}
