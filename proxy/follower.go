package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	readBuf    = 256 << 10
)

// deadlineReader extends the read deadline before every read, so a link is
// declared dead after timeout of silence, whatever phase it is in.
type deadlineReader struct {
	conn    net.Conn
	timeout time.Duration
	onRead  func()
}

func (r *deadlineReader) Read(b []byte) (int, error) {
	if err := r.conn.SetReadDeadline(time.Now().Add(r.timeout)); err != nil {
		return 0, err
	}
	n, err := r.conn.Read(b)
	if n > 0 && r.onRead != nil {
		r.onRead()
	}
	return n, err
}

// upstreamConn is one connection to the origin in the replica role. Writes
// are serialised: ACKs come from a ticker and from the stream reader.
type upstreamConn struct {
	conn    net.Conn
	br      *bufio.Reader
	wmu     sync.Mutex
	eofForm bool // the payload came in the $EOF: framing
}

func (u *upstreamConn) Write(b []byte) (int, error) {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if err := u.conn.SetWriteDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return 0, err
	}
	return u.conn.Write(b)
}

func (u *upstreamConn) ack(offset int64) error {
	_, err := u.Write(psync.AckCommand(offset))
	return err
}

// dialUpstream connects and runs the handshake up to PSYNC.
func (p *Proxy) dialUpstream(ctx context.Context, rdbOnly bool, onRead func()) (*upstreamConn, error) {
	d := net.Dialer{Timeout: p.cfg.ReplTimeout, KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", p.upstreamAddr())
	if err != nil {
		return nil, fmt.Errorf("dial upstream: %w", err)
	}
	u := &upstreamConn{conn: conn}
	u.br = bufio.NewReaderSize(&deadlineReader{conn: conn, timeout: p.cfg.ReplTimeout, onRead: onRead}, readBuf)
	port := p.cfg.AnnouncePort
	if port == 0 {
		if a, ok := p.Addr().(*net.TCPAddr); ok {
			port = a.Port
		}
	}
	err = psync.Handshake(u, u.br, psync.HandshakeConfig{
		User: p.cfg.UpstreamUser, Password: p.cfg.UpstreamPassword,
		ListeningPort: port, IPAddress: p.cfg.AnnounceIP, RDBOnly: rdbOnly,
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return u, nil
}

// upstreamAddr is the address the follower connects to.
func (p *Proxy) upstreamAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upstream
}

// isSelf reports whether host:port is this proxy's own listener: a local
// address (or the announced IP) on the listening port.
func (p *Proxy) isSelf(host string, port int) bool {
	a, ok := p.Addr().(*net.TCPAddr)
	if !ok || a.Port != port {
		return false
	}
	if host == p.cfg.AnnounceIP {
		return true
	}
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return false // a name: not resolved here
	case ip.Equal(a.IP):
		return true
	case !a.IP.IsUnspecified():
		return false
	case ip.IsLoopback():
		return true
	}
	addrs, _ := net.InterfaceAddrs()
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// moveUpstream points the follower at another upstream (REPLICAOF) and ends
// the current link; the next one PSYNCs the new address with the current
// history, so a promoted replica of the same history answers +CONTINUE.
// It reports false when addr is the current upstream already.
func (p *Proxy) moveUpstream(addr string) bool {
	if !p.repoint(addr) {
		return false
	}
	p.gate.moved() // a new upstream has its own costs; persisted outside mu
	return true
}

func (p *Proxy) repoint(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if addr == p.upstream {
		return false
	}
	p.log.Warn("upstream moved by REPLICAOF; a restart goes back to the configured address",
		"from", p.upstream, "to", addr, "configured", p.cfg.Upstream)
	p.upstream = addr
	if p.cutLink != nil {
		p.cutLink(errMoved)
	}
	select { // cut a backoff short
	case p.movedCh <- struct{}{}:
	default:
	}
	return true
}

func (p *Proxy) touchIO() {
	p.mu.Lock()
	p.link.lastIO = time.Now()
	p.mu.Unlock()
}

// follow keeps the upstream link alive until ctx ends, reconnecting with
// capped exponential backoff and jitter.
func (p *Proxy) follow(ctx context.Context) {
	backoff := backoffMin
	for ctx.Err() == nil {
		if !p.awaitFullSyncTurn(ctx) {
			return
		}
		p.stats.UpstreamConnects.Add(1)
		endBefore := p.store.bl.End()
		streamed, err := p.syncOnce(ctx)
		p.setLink(LinkConnect)
		if ctx.Err() != nil {
			p.stats.UpstreamDisconnects.add(UpShutdown, UpError)
			return
		}
		reason := disconnectReason(err)
		p.stats.UpstreamDisconnects.add(reason, UpError)
		if errors.Is(err, errMoved) { // an operator's order, not a failure: connect at once
			p.log.Info("upstream link moved by REPLICAOF", "upstream", p.upstreamAddr())
			backoff = backoffMin
			continue
		}
		// Only a link that stored something was healthy. One that streamed
		// but could not store (a full disk) would, retried at once, have the
		// origin resend its backlog every few milliseconds.
		if streamed && p.store.bl.End() != endBefore {
			backoff = backoffMin
		}
		sleep := backoff/2 + rand.N(backoff/2+1)
		// After a failed full sync the next connection most likely needs
		// one again: it waits the cost backoff, not the cheap one.
		sleep = max(sleep, p.gate.wait(true, p.position().hist.Empty()))
		p.log.Warn("upstream link down", "upstream", p.upstreamAddr(), "reason", reason, "err", err,
			"retry_in", sleep.Round(time.Millisecond).String())
		select {
		case <-ctx.Done():
			return
		case <-p.movedCh:
			backoff = backoffMin
			continue
		case <-time.After(sleep):
		}
		backoff = min(backoff*2, backoffMax)
	}
}

// syncOnce runs one connection: handshake, PSYNC, optional full sync, then
// streaming until an error. streamed reports whether it reached streaming.
func (p *Proxy) syncOnce(ctx context.Context) (streamed bool, err error) {
	ctx, cut := context.WithCancelCause(ctx)
	p.mu.Lock()
	p.cutLink = cut
	select { // a move before now is already in effect: this dial uses it
	case <-p.movedCh:
	default:
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.cutLink = nil
		p.mu.Unlock()
		if errors.Is(context.Cause(ctx), errMoved) {
			err = errMoved // whatever the cut connection reported
		}
		cut(nil)
	}()
	p.setLink(LinkConnecting)
	u, err := p.dialUpstream(ctx, false, p.touchIO)
	if err != nil {
		return false, err
	}
	defer u.conn.Close()
	stop := context.AfterFunc(ctx, func() { u.conn.Close() })
	defer stop()
	p.setLink(LinkHandshake)

	pos := p.position()
	id, off := "", int64(-1)
	if !pos.hist.Empty() {
		id, off = pos.hist.ReplID, pos.end+1
	}
	reply, err := psync.Psync(u, u.br, id, off, nil)
	if err != nil {
		return false, err
	}
	switch reply.Kind {
	case psync.ReplyContinue:
		p.stats.UpstreamPartialSyncs.Add(1)
		p.gate.continued()
		p.onContinue(reply.ReplID, off)
	case psync.ReplyFullResync:
		purpose := purposeHistoryChange
		if pos.hist.Empty() {
			purpose = purposeInitial
		}
		p.log.Info("upstream full resync", "replid", reply.ReplID, "offset", reply.Offset, "purpose", purpose)
		p.gate.started(purpose)
		info, got, err := p.receiveFullSync(u, reply)
		if err != nil {
			p.stats.UpstreamSyncFailures.Add(1)
			p.fullSyncFailed(purpose, err, got)
			return false, fmt.Errorf("full sync: %w", err)
		}
		p.fullSyncSucceeded(purpose, info)
	case psync.ReplyTryLater:
		return false, fmt.Errorf("upstream not ready: %s", reply.Line)
	default:
		return false, fmt.Errorf("upstream refused PSYNC: %s", reply.Line)
	}
	p.setLink(LinkConnected)
	p.log.Info("upstream link up", "upstream", p.upstreamAddr(), "replid", p.position().hist.ReplID, "offset", p.store.bl.End())
	return true, p.stream(ctx, u)
}

// disconnectReason classifies why an upstream connection ended.
func disconnectReason(err error) UpstreamReason {
	var ne net.Error
	switch {
	case errors.Is(err, errBacklogWrite):
		return UpBacklogWrite
	case errors.Is(err, errMoved):
		return UpReplicaof
	case errors.Is(err, errLocal):
		return UpDataDir
	case errors.As(err, &ne) && ne.Timeout():
		return UpTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, psync.ErrShortPayload),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, net.ErrClosed):
		return UpClosed
	}
	return UpError
}

// onContinue handles +CONTINUE: with a new ID the history shifts and the
// downstream replicas are disconnected to learn it through replid2.
func (p *Proxy) onContinue(newID string, off int64) {
	old, changed := p.store.shiftHistory(newID)
	if !changed {
		p.log.Info("upstream partial resync", "offset", off)
		return
	}
	n := p.closeSessions(DownReplIDChanged)
	p.log.Info("upstream replication ID changed", "replid", newID, "replid2", old,
		"second_repl_offset", off, "replicas_disconnected", n)
}

// receiveFullSync reads the payload into a new snapshot, verifies and
// installs it, and starts a new backlog after its offset. Until then the old
// history keeps being served.
// It returns the snapshot and how many payload bytes arrived (also on error).
func (p *Proxy) receiveFullSync(u *upstreamConn, reply psync.PsyncReply) (*snapshot.Info, int64, error) {
	p.setLink(LinkSync)
	start := time.Now()
	defer func() { p.cfg.Observer.ObserveUpstreamFullSync(time.Since(start).Seconds()) }()
	rcv, n, err := p.receivePayload(u, reply, func(n int64) {
		p.mu.Lock()
		p.link.syncRead = n
		p.mu.Unlock()
	}, func(h psync.PayloadHeader) {
		p.mu.Lock()
		p.link.syncTotal, p.link.syncRead = max(h.Length, 0), 0
		p.mu.Unlock()
	})
	if err != nil {
		return nil, n, err
	}
	defer rcv.Abort()
	if u.eofForm {
		// The origin sends no stream byte until this ACK (replication.c:
		// updateSlavesWaitingBgsave() sets repl_start_cmd_stream_on_ack).
		if err := u.ack(reply.Offset); err != nil {
			return nil, n, fmt.Errorf("ack after payload: %w", err)
		}
	}
	info, err := p.finishSnapshot(rcv, reply)
	if err != nil {
		p.log.Error("snapshot rejected", "replid", reply.ReplID, "offset", reply.Offset, "bytes", n, "err", err)
		return nil, n, err
	}
	if err := p.installFullSync(info); err != nil {
		return nil, n, localError(err)
	}
	p.log.Info("snapshot installed", "replid", info.ReplID, "offset", info.Offset, "bytes", info.Size,
		"rdb_version", info.RDBVersion, "seconds", time.Since(start).Seconds())
	return info, n, nil
}

// receivePayload reads a payload header and the payload into a new
// receiver, for the main link and refreshes alike. A payload whose
// announced length cannot fit the data dir is refused at its header,
// before the origin sends the rest. Data-dir failures come back as local
// errors; the caller owns the receiver (Abort) on success.
func (p *Proxy) receivePayload(u *upstreamConn, reply psync.PsyncReply, progress func(int64),
	onHeader func(psync.PayloadHeader)) (*snapshot.Receiver, int64, error) {
	hdr, err := psync.ReadPayloadHeader(u.br, nil)
	if err != nil {
		return nil, 0, err
	}
	u.eofForm = hdr.EOFForm()
	if onHeader != nil {
		onHeader(hdr)
	}
	if hdr.Length >= 0 {
		if reason := p.diskCheck(hdr.Length, false); reason != "" {
			return nil, hdr.Length, localError(errors.New(reason))
		}
	}
	rcv, err := snapshot.NewReceiver(p.store.snapDir)
	if err != nil {
		return nil, 0, localError(err)
	}
	n, err := psync.CopyPayload(localWriter{rcv}, u.br, hdr, progress)
	p.stats.UpstreamRDBBytes.Add(n)
	if err != nil {
		rcv.Abort()
		return nil, max(n, hdr.Length), fmt.Errorf("receive payload after %d bytes: %w", n, err)
	}
	return rcv, n, nil
}

// localWriter marks a receiver's write errors as the data dir's.
type localWriter struct{ w io.Writer }

func (l localWriter) Write(b []byte) (int, error) {
	n, err := l.w.Write(b)
	if err != nil {
		err = localError(err)
	}
	return n, err
}

// fullSyncFailed records a failed fork-costing sync and says when the next
// may be asked for.
func (p *Proxy) fullSyncFailed(purpose syncPurpose, err error, got int64) {
	class := p.gate.failed(err, got)
	p.stats.countFullSync(purpose, class)
	gs := p.gate.status()
	attrs := []any{"purpose", purpose, "class", class, "failures_in_a_row", gs.InARow, "err", err}
	if !gs.NextAt.IsZero() {
		attrs = append(attrs, "next_attempt_in", time.Until(gs.NextAt).Round(time.Second).String())
	}
	if class == failPayload && gs.InARow >= 2 {
		p.log.Error("the upstream keeps sending RDBs that fail verification; each attempt costs it a fork", attrs...)
	} else {
		p.log.Warn("full sync from the upstream failed; the origin forked for nothing", attrs...)
	}
	if perr := p.gate.persistError(); perr != nil {
		p.log.Warn("full-sync backoff state not persisted; a restart forgets it", "err", perr)
	}
}

func (p *Proxy) fullSyncSucceeded(purpose syncPurpose, info *snapshot.Info) {
	p.gate.succeeded(purpose, info.Size)
	p.stats.countFullSync(purpose, "")
}

// awaitFullSyncTurn holds the main link back while a full sync, which the
// next connection will most likely need, must wait: the cost backoff, or a
// local cause (a full data dir) that retrying cannot fix. It reports false
// when ctx ends.
func (p *Proxy) awaitFullSyncTurn(ctx context.Context) bool {
	for {
		noHistory := p.position().hist.Empty()
		d := p.gate.wait(true, noHistory)
		if d == 0 {
			gs := p.gate.status()
			if !noHistory && !gs.Pending { // a partial resync is expected: no fork
				return true
			}
			if p.roomForSnapshot(p.gate.expected()) {
				return true
			}
			d = diskRecheck
		}
		select {
		case <-ctx.Done():
			return false
		case <-p.movedCh:
			select { // leave the move for syncOnce to take
			case p.movedCh <- struct{}{}:
			default:
			}
			return true
		case <-time.After(d):
		}
	}
}

// diskRecheck is how often a held-back full sync looks at the data dir again.
const diskRecheck = 2 * time.Second

// roomForSnapshot reports whether a snapshot of about size bytes fits the
// data dir now; a change of verdict is logged once.
func (p *Proxy) roomForSnapshot(size int64) bool {
	reason := p.diskCheck(size, p.gate.status().LastClass == string(failLocal))
	if p.gate.setBlocked(reason) {
		if reason != "" {
			p.log.Error("full sync from the upstream held back until the data dir has room; not asking the origin to fork",
				"reason", reason, "data_dir", p.cfg.DataDir)
		} else {
			p.log.Info("data dir has room again; full syncs from the upstream may proceed", "data_dir", p.cfg.DataDir)
		}
	}
	return reason == ""
}

// installFullSync makes info the snapshot of a new history.
func (p *Proxy) installFullSync(info *snapshot.Info) error {
	err := p.store.installFullSync(info)
	if err == nil || p.store.published().snap == info {
		p.scanner.Reset() // the new backlog starts at a command boundary
		p.stats.UpstreamFullSyncs.Add(1)
	}
	return err
}

// stream appends upstream bytes to the backlog until the link fails, ACKing
// once a second and at once on REPLCONF GETACK.
func (p *Proxy) stream(ctx context.Context, u *upstreamConn) error {
	var acks sync.WaitGroup
	defer acks.Wait()
	done := make(chan struct{})
	defer close(done) // before the Wait: defers run last-in first-out
	acks.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := u.ack(p.store.bl.End()); err != nil {
					u.conn.Close()
					return
				}
			}
		}
	})
	if err := u.ack(p.store.bl.End()); err != nil {
		return err
	}
	buf := make([]byte, readBuf)
	for {
		n, rerr := u.br.Read(buf)
		if n > 0 {
			if err := p.appendStream(buf[:n], u); err != nil {
				return err
			}
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return rerr
		}
	}
}

// appendStream scans a chunk for command boundaries and GETACK, appends it
// to the backlog and answers GETACK with the offset just written.
func (p *Proxy) appendStream(chunk []byte, u *upstreamConn) error {
	sc := p.scanner // scan a copy: it is committed only with the bytes
	boundary, getack := -1, false
	if err := sc.Scan(chunk, func(end int, c *psync.Command) {
		boundary = end
		if c.IsGetAck() {
			getack = true
		}
	}); err != nil {
		// A stock master never sends this. The bytes already relayed may be
		// part of a corrupt command, so the history cannot be trusted.
		p.discardHistory(err)
		return err
	}
	if n, err := p.store.bl.Append(chunk, boundary); err != nil {
		// Part of the chunk may have reached the disk (ENOSPC); the next
		// PSYNC resumes after it, so the scanner must have seen exactly it.
		_ = p.scanner.Scan(chunk[:n], nil)
		return fmt.Errorf("%w: %w", errBacklogWrite, err)
	}
	p.scanner = sc
	p.stats.UpstreamStreamBytes.Add(int64(len(chunk)))
	end := p.store.bl.End()
	p.store.arrivals.record(end, time.Now())
	p.maybeKick(end)
	if getack {
		return u.ack(end)
	}
	return nil
}

// discardHistory forgets the current history after stream corruption; the
// next connection takes a full resync.
func (p *Proxy) discardHistory(cause error) {
	p.log.Error("invalid replication stream from upstream; discarding history", "err", cause)
	p.scanner.Reset()
	p.store.discard()
	p.closeSessions(DownHistoryReset)
}

// errMoved: REPLICAOF cut the link to point it elsewhere.
var errMoved = errors.New("upstream moved by REPLICAOF")

// errBacklogWrite: the backlog could not store received bytes (disk full,
// I/O error). The link is dropped and resumes after what was stored.
var errBacklogWrite = errors.New("append to backlog")

// refreshSnapshot fetches a new snapshot on a second connection while the
// main link keeps streaming: REPLCONF rdb-only 1 and PSYNC ? -1, or a plain
// second sync dropped after the payload when rdb-only is refused.
func (p *Proxy) refreshSnapshot(ctx context.Context, since int64) {
	p.log.Info("snapshot refresh started", "stream_since_snapshot", since)
	start := time.Now()
	info, err := p.fetchSnapshot(ctx)
	if err != nil {
		p.stats.RefreshFailures.Add(1)
		p.log.Warn("snapshot refresh failed", "err", err)
		return
	}
	p.fullSyncSucceeded(purposeRefresh, info)
	p.stats.Refreshes.Add(1)
	p.log.Info("snapshot refreshed", "replid", info.ReplID, "offset", info.Offset, "bytes", info.Size,
		"seconds", time.Since(start).Seconds())
}

func (p *Proxy) fetchSnapshot(ctx context.Context) (*snapshot.Info, error) {
	u, err := p.dialUpstream(ctx, true, nil)
	if errors.Is(err, psync.ErrRDBOnlyRefused) {
		p.log.Info("upstream refuses rdb-only; refreshing with a plain sync")
		u, err = p.dialUpstream(ctx, false, nil)
	}
	if err != nil {
		return nil, err
	}
	defer u.conn.Close()
	stop := context.AfterFunc(ctx, func() { u.conn.Close() })
	defer stop()
	reply, err := psync.Psync(u, u.br, "", -1, nil)
	if err != nil {
		return nil, err
	}
	if reply.Kind != psync.ReplyFullResync {
		return nil, fmt.Errorf("refresh PSYNC answered %q", reply.Line)
	}
	// The origin forks now: from here on, a failure is a wasted fork.
	p.gate.started(purposeRefresh)
	info, got, err := p.receiveRefresh(ctx, u, reply)
	if err != nil {
		p.fullSyncFailed(purposeRefresh, err, got)
	}
	return info, err
}

// receiveRefresh receives and installs a refreshed snapshot of the current
// history; it returns how many payload bytes arrived (also on error).
func (p *Proxy) receiveRefresh(ctx context.Context, u *upstreamConn, reply psync.PsyncReply) (*snapshot.Info, int64, error) {
	rcv, got, err := p.receivePayload(u, reply, nil, nil)
	if err != nil {
		return nil, got, fmt.Errorf("refresh payload: %w", err)
	}
	defer rcv.Abort()
	u.conn.Close()
	// The main link may not have reached the snapshot's offset yet.
	deadline := time.Now().Add(p.cfg.ReplTimeout)
	for p.store.bl.End() < reply.Offset && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	pos := p.position()
	if reply.ReplID != pos.hist.ReplID || reply.Offset+1 < pos.first || reply.Offset > pos.end {
		return nil, got, fmt.Errorf("%w: snapshot %s at %d, history %s holding [%d, %d]",
			errRefreshRejected, reply.ReplID, reply.Offset, pos.hist.ReplID, pos.first, pos.end)
	}
	info, err := p.finishSnapshot(rcv, reply)
	if err != nil {
		return nil, got, err
	}
	if err := p.store.installRefresh(info); err != nil {
		if errors.Is(err, errRefreshRejected) {
			return nil, got, err
		}
		return nil, got, localError(err)
	}
	return info, got, nil
}

// finishSnapshot verifies and installs a received payload as the snapshot
// file of reply's (replid, offset).
func (p *Proxy) finishSnapshot(rcv *snapshot.Receiver, reply psync.PsyncReply) (*snapshot.Info, error) {
	info, err := rcv.Finish(reply.ReplID, reply.Offset)
	var ve *snapshot.VerifyError
	if err != nil && !errors.As(err, &ve) {
		return nil, localError(err) // fsync, rename: the data dir's
	}
	if err == nil && rcv.KeyspaceError() != nil {
		p.log.Warn("snapshot keys not counted; INFO shows no keyspace for it", "snapshot", info.Name, "err", rcv.KeyspaceError())
	}
	return info, err
}
