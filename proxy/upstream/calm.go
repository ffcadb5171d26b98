package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/psync"
)

// After the upstream hangs up on a streaming link, the reconnection needs a
// full sync unless the origin's backlog still covers replproxy's offset.
// When the origin cut replproxy for falling behind a write burst (its
// client-output-buffer-limit for replicas), a full sync asked while the
// burst runs is cut the same way: the stream piles up in the same output
// buffer while the RDB is sent, and a fork is spent for nothing. So before
// asking, replproxy reads the origin's INFO replication over an ordinary
// client connection: it reconnects at once when the origin's backlog
// covers it (a partial resync) or the origin writes no faster than
// replproxy can take; otherwise it samples once a second until that is so,
// bounded by --full-sync-calm-wait.

// burstCut is what the follower saw of its intake before the upstream hung up.
type burstCut struct {
	at       time.Time
	endAtCut int64 // the backlog's end when the link ended
	intake   intakeRates
}

// calmStatus is the wait as INFO and metrics show it.
type calmStatus struct {
	waiting    atomic.Bool
	waits      atomic.Int64
	originRate atomic.Int64 // bytes/s, the last sample
	intake     atomic.Int64 // bytes/s replproxy took while behind, before the last hang-up; 0: unmeasured
	// infoRefused: the upstream answered INFO with an error (no +info);
	// follow's goroutine only, reset by a move.
	infoRefused bool
	f           *Follower // whose link waits
}

// calmFraction: an origin writing below this share of what replproxy can
// take (measured while it was behind) has calmed: the full sync's own
// stream backlog drains.
const calmFraction = 0.8

// awaitCalm holds the next connection after an upstream hang-up until the
// origin's backlog covers replproxy's offset, its write rate is below what
// replproxy can take, the wait's limit passes, or ctx ends.
func (c *calmStatus) awaitCalm(ctx context.Context, cut *burstCut) {
	f := c.f
	if f.cfg.CalmWaitMax <= 0 || c.infoRefused { // said once: the upstream user may not read INFO
		return
	}
	cli, err := c.dialInfoClient(ctx)
	if err != nil {
		f.log.Info("cannot read the origin's INFO before reconnecting; not waiting for a burst to calm", "err", err)
		return
	}
	defer cli.conn.Close()
	stop := context.AfterFunc(ctx, func() { cli.conn.Close() })
	defer stop()
	defer c.waiting.Store(false)

	limit, measured := cut.intake.limit()
	c.intake.Store(int64(cut.intake.busy)) // 0: never behind, nothing measured
	start := time.Now()
	deadline := start.Add(f.cfg.CalmWaitMax)
	var prev originSample
	peak := 0.0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		s, err := cli.sample()
		if err != nil {
			var he *psync.HandshakeError
			if errors.As(err, &he) { // an error reply, not a broken link: it will not change
				c.infoRefused = true
			}
			f.log.Warn("reading the origin's write rate failed; reconnecting now", "err", err,
				"advice", "allow the upstream user INFO (+info), so replproxy can wait out a write burst instead of forking the origin for nothing")
			return
		}
		if s.covers(f.store.Position().Hist.ReplID, f.store.Backlog.End()+1) {
			return // a partial resync: nothing to wait for
		}
		if !prev.at.IsZero() {
			rate := float64(s.offset-prev.offset) / s.at.Sub(prev.at).Seconds()
			c.originRate.Store(int64(rate))
			peak = max(peak, rate)
			if rate < limit {
				if c.waiting.Load() {
					f.log.Info("the origin's write burst has calmed; asking for a full sync",
						"origin_bytes_per_sec", int64(rate), "intake_bytes_per_sec", int64(limit),
						"waited", time.Since(start).Round(time.Second).String())
					c.adviseBurst(cut, s, peak)
				}
				return
			}
			if !c.waiting.Swap(true) {
				c.waits.Add(1)
				f.log.Warn("the upstream hung up while the origin writes faster than replproxy can take; holding the next full sync until the burst calms, "+
					"so that the origin does not fork for a sync it would cut the same way",
					"origin_bytes_per_sec", int64(rate), "intake_bytes_per_sec", int64(limit), "intake_measured_while_behind", measured,
					"max_wait", f.cfg.CalmWaitMax.String())
			}
		}
		if time.Now().After(deadline) {
			f.log.Warn("the origin's write burst goes on past --full-sync-calm-wait; asking for a full sync anyway",
				"origin_bytes_per_sec", c.originRate.Load(), "intake_bytes_per_sec", int64(limit))
			c.adviseBurst(cut, s, peak)
			return
		}
		prev = s
		select {
		case <-ctx.Done():
			return
		case <-f.movedCh:
			c.repostMove()
			return
		case req := <-f.guard.accepts:
			req.done <- f.guard.acceptHeld(req.replid)
		case <-tick.C:
		}
	}
}

// repostMove puts a move back for the follow loop, which acts on it.
func (c *calmStatus) repostMove() {
	f := c.f
	select {
	case f.movedCh <- struct{}{}:
	default:
	}
}

// adviseBurst names the origin settings that would have carried the burst
// without a cut, from what was seen: the stream the origin had to queue
// while replproxy read at its intake rate, and the stream written between
// the cut and now (a backlog that size makes the reconnection partial).
func (c *calmStatus) adviseBurst(cut *burstCut, s originSample, peak float64) {
	f := c.f
	in := cut.intake
	burst := s.offset - in.from
	took := s.at.Sub(in.since).Seconds()
	since := s.offset - cut.endAtCut
	advice := fmt.Sprintf("CONFIG SET repl-backlog-size %s (so that a reconnection after a cut continues)", roundMB(since*5/4))
	if in.busy > 0 { // the queue replproxy left is known only when it measured its intake
		queue := int64(float64(burst) - in.busy*took)
		advice = fmt.Sprintf("CONFIG SET client-output-buffer-limit \"replica %s 0 0\" (a hard limit above the stream queued for replproxy) and ",
			roundMB(max(queue, 0)*5/4)) + advice
	}
	f.log.Warn("origin settings that would have carried this burst without cutting replproxy",
		"burst_bytes", burst, "burst_seconds", int64(took), "origin_peak_bytes_per_sec", int64(peak),
		"intake_bytes_per_sec", int64(in.busy), "advice", advice)
}

// roundMB renders n bytes as whole megabytes, rounded up, as Redis reads them.
func roundMB(n int64) string {
	return strconv.FormatInt((n+(1<<20)-1)>>20, 10) + "mb"
}

// infoClient is an ordinary client connection to the upstream.
type infoClient struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialInfoClient connects to the upstream as a client (AUTH, no replica
// handshake), over TLS when the link uses it.
func (cs *calmStatus) dialInfoClient(ctx context.Context) (*infoClient, error) {
	f := cs.f
	addr := f.UpstreamAddr()
	var tlsCfg *tls.Config
	if f.cfg.UpstreamTLS {
		tlsCfg = f.sec.ClientConfig(addr, false)
	}
	conn, err := security.DialTLS(ctx, addr, replicaHandshakeTimeout, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("dial upstream: %w", err)
	}
	c := &infoClient{conn: conn, br: bufio.NewReader(conn)}
	if f.cfg.UpstreamPassword != "" {
		cmd := psync.EncodeCommand("AUTH", f.cfg.UpstreamPassword)
		if f.cfg.UpstreamUser != "" {
			cmd = psync.EncodeCommand("AUTH", f.cfg.UpstreamUser, f.cfg.UpstreamPassword)
		}
		if err := c.ask(cmd); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return c, nil
}

// ask sends cmd and expects a status reply.
func (c *infoClient) ask(cmd []byte) error {
	if err := c.conn.SetDeadline(time.Now().Add(replicaHandshakeTimeout)); err != nil {
		return err
	}
	if _, err := c.conn.Write(cmd); err != nil {
		return err
	}
	line, err := psync.ReadLine(c.br, psync.MaxReplyLine)
	if err != nil {
		return err
	}
	if strings.HasPrefix(line, "-") {
		return errors.New(line)
	}
	return nil
}

// originSample is one reading of the origin's INFO replication.
type originSample struct {
	at                       time.Time
	offset                   int64
	replID, replID2          string
	secondOffset             int64
	backlogFirst, backlogLen int64
}

// covers reports whether a PSYNC of (replID, next) would continue.
func (s originSample) covers(replID string, next int64) bool {
	idOK := s.replID == replID || s.replID2 == replID && next <= s.secondOffset
	return idOK && s.backlogLen > 0 && next >= s.backlogFirst && next <= s.offset+1
}

func (c *infoClient) sample() (originSample, error) {
	if err := c.conn.SetDeadline(time.Now().Add(replicaHandshakeTimeout)); err != nil {
		return originSample{}, err
	}
	if _, err := c.conn.Write(psync.EncodeCommand("INFO", "replication")); err != nil {
		return originSample{}, err
	}
	txt, err := readBulk(c.br, 1<<20)
	if err != nil {
		return originSample{}, err
	}
	info := parseInfoFields(txt)
	num := func(k string) int64 { n, _ := strconv.ParseInt(info[k], 10, 64); return n }
	s := originSample{at: time.Now(), offset: num("master_repl_offset"), replID: info["master_replid"],
		replID2: info["master_replid2"], secondOffset: num("second_repl_offset"),
		backlogFirst: num("repl_backlog_first_byte_offset"), backlogLen: num("repl_backlog_histlen")}
	if info["master_repl_offset"] == "" {
		return s, fmt.Errorf("INFO replication has no master_repl_offset")
	}
	return s, nil
}

// intakeMeter measures what the follower takes in, per wall-clock second:
// the bytes appended, and how many came in reads that filled the buffer
// (the upstream had more queued). A second with nearly all of them so was
// spent behind, and measures what replproxy can take; one full read after
// a short stall (a GC, an fsync) does not make a second busy. Wall time
// counts, so a proxy slowed by anything (its disk, CPU starvation, a
// pause) measures slow. The follow goroutine only.
type intakeMeter struct {
	buckets [intakeWindow]intakeBucket
}

// intakeWindow: the seconds the meter looks back.
const intakeWindow = 10

type intakeBucket struct {
	sec   int64 // unix second; 0: unused
	bytes int64
	full  int64 // of them, read in reads that filled the buffer
	from  int64 // the backlog's end when the second began
}

// busyShare: a second whose bytes came this much in full reads was spent
// behind.
const busyShare = 0.9

func (b intakeBucket) busy() bool {
	return b.bytes > 0 && float64(b.full) >= busyShare*float64(b.bytes)
}

// add counts n bytes read at now, the backlog's end before them being end.
func (m *intakeMeter) add(now time.Time, n int, busy bool, end int64) {
	sec := now.Unix()
	b := &m.buckets[sec%intakeWindow]
	if b.sec != sec {
		*b = intakeBucket{sec: sec, from: end}
	}
	b.bytes += int64(n)
	if busy {
		b.full += int64(n)
	}
}

// intakeRates is what the meter saw over its window.
type intakeRates struct {
	busy     float64 // mean bytes/s of the seconds spent behind; 0: never behind
	achieved float64 // mean bytes/s of the seconds with any read
	since    time.Time
	from     int64 // the backlog's end at since
}

// limit is the origin rate replproxy can take: a share of what it took
// while behind when it was (measured: true); otherwise nothing shows it
// was slow, so an origin writing no faster than it was taken is calm.
func (r intakeRates) limit() (bytesPerSec float64, measured bool) {
	if r.busy > 0 {
		return calmFraction * r.busy, true
	}
	return max(1.25*r.achieved, 1<<20), false
}

// cut summarises the window at a hang-up.
func (m *intakeMeter) cut(now time.Time, end int64) *burstCut {
	sec := now.Unix()
	in := intakeRates{from: end, since: now}
	var busyBytes, allBytes int64
	var busySecs, allSecs float64
	for _, b := range m.buckets {
		if b.sec <= sec-intakeWindow || b.sec > sec {
			continue
		}
		span := 1.0
		if b.sec == sec { // the current second, so far
			span = max(now.Sub(time.Unix(sec, 0)).Seconds(), 0.001)
		}
		allBytes, allSecs = allBytes+b.bytes, allSecs+span
		if b.busy() {
			busyBytes, busySecs = busyBytes+b.bytes, busySecs+span
		}
		if t := time.Unix(b.sec, 0); t.Before(in.since) {
			in.since, in.from = t, b.from
		}
	}
	if busySecs > 0 {
		in.busy = float64(busyBytes) / busySecs
	}
	if allSecs > 0 {
		in.achieved = float64(allBytes) / allSecs
	}
	return &burstCut{at: now, endAtCut: end, intake: in}
}
