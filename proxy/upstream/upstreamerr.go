package upstream

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
)

// What the upstream's refusals and hang-ups mean, and the advice given
// for each.

// upstreamReplyError is an error reply of the upstream, kept as it wrote it.
type upstreamReplyError struct{ step, line string }

func (e *upstreamReplyError) Error() string { return "upstream refused " + e.step + ": " + e.line }

// upstreamErrorLine is the upstream's error reply inside err, "" if none.
func upstreamErrorLine(err error) string {
	var re *upstreamReplyError
	var he *psync.HandshakeError
	switch {
	case errors.As(err, &re):
		return re.line
	case errors.As(err, &he) && strings.HasPrefix(he.Reply, "-"):
		return he.Reply
	}
	return ""
}

// replyClass classifies an error reply of the upstream.
func replyClass(line string) vocab.UpstreamReason {
	code, _, _ := strings.Cut(strings.TrimPrefix(line, "-"), " ")
	switch {
	case code == "DENIED":
		return vocab.UpDenied
	case code == "NOAUTH", code == "WRONGPASS", strings.HasPrefix(line, "-ERR invalid password"),
		strings.HasPrefix(line, "-ERR AUTH"), strings.HasPrefix(line, "-ERR Client sent AUTH"):
		return vocab.UpAuth
	case code == "NOPERM":
		return vocab.UpNoPerm
	case code == "LOADING":
		return vocab.UpLoading
	case code == "NOMASTERLINK":
		return vocab.UpNoMasterLink
	case strings.HasPrefix(line, "-ERR unknown command"):
		return vocab.UpUnknownCommand
	}
	return vocab.UpError
}

// advice says what to do about a cause the proxy cannot fix itself; "" for
// the ones that need no operator. streamed: the link had reached
// streaming (a timeout then means an idle link between the origin's PINGs).
func advice(reason vocab.UpstreamReason, replTimeout time.Duration, streamed bool, err error) string {
	if cb := (*closedBehindError)(nil); errors.As(err, &cb) {
		return "the upstream hung up while replproxy was reading behind it: most likely its client-output-buffer-limit for replicas " +
			"cut replproxy, whose backlog appends (its disk) were slower than the origin's writes; the origin's log says " +
			"\"overcoming of output buffer limits\" if so. Raise that limit on the origin (CONFIG SET client-output-buffer-limit \"replica 0 0 0\", " +
			"or a hard limit above the burst) and its repl-backlog-size, so that the reconnection is a partial resync, or give the data dir a faster disk"
	}
	switch reason {
	case vocab.UpDenied:
		return "the origin is in protected mode: set a password on it (requirepass, and --upstream-password here) or bind it to loopback"
	case vocab.UpAuth:
		return "check --upstream-user and --upstream-password(-file) against the origin's requirepass or ACL users"
	case vocab.UpNoPerm:
		return "the upstream user lacks replication rights; it needs +psync +replconf +ping, and +info to wait out write bursts (ACL SETUSER <user> +psync +replconf +ping +info)"
	case vocab.UpNoMasterLink:
		return "the upstream is a replica that lost its master (replica-serve-stale-data no); point --upstream at the master, or wait"
	case vocab.UpUnknownCommand:
		return "the upstream refuses a replication command: PSYNC or REPLCONF renamed or disabled (rename-command)?"
	case vocab.UpTimeout:
		if replTimeout <= originPingPeriod && streamed {
			return fmt.Sprintf("--repl-timeout %v does not exceed the origin's repl-ping-replica-period (%v by default): an idle link times out between PINGs; raise it",
				replTimeout, originPingPeriod)
		}
	}
	return ""
}

// originPingPeriod is Redis' default repl-ping-replica-period.
const originPingPeriod = 10 * time.Second

// adviseOnce logs the advice for a cause once per upstream address.
func (f *Follower) adviseOnce(reason vocab.UpstreamReason, err error) {
	text := advice(reason, f.cfg.ReplTimeout, f.streamedLast, err)
	if text == "" || f.advised[reason] {
		return
	}
	if f.advised == nil {
		f.advised = map[vocab.UpstreamReason]bool{}
	}
	f.advised[reason] = true
	f.log.Error("upstream link: "+text, "reason", reason, "upstream", f.UpstreamAddr(), "err", err)
}
