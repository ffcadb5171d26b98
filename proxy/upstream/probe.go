package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"time"

	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/psync"
)

// ProbeResult is one check of `replproxy check-config --probe`.
type ProbeResult struct {
	Check  string // "upstream", "handshake", "data dir"
	OK     bool
	Detail string
}

// sec is nil when the certificate or users files did not load (filesErr).
func Probe(ctx context.Context, cfg Options, sec *security.Service, filesErr error) []ProbeResult {
	if filesErr != nil {
		return []ProbeResult{{Check: "files", Detail: filesErr.Error()}, probeDataDir(cfg)}
	}
	var tlsCfg *tls.Config
	if cfg.UpstreamTLS {
		tlsCfg = sec.ClientConfig(cfg.Upstream, false)
	}
	out := []ProbeResult{probeUpstream(ctx, cfg, tlsCfg)}
	if out[0].OK {
		out = append(out, probeHandshake(ctx, cfg, tlsCfg))
	}
	return append(out, probeDataDir(cfg))
}

func probeUpstream(ctx context.Context, cfg Options, tlsCfg *tls.Config) ProbeResult {
	r := ProbeResult{Check: "upstream"}
	c, err := security.DialTLS(ctx, cfg.Upstream, 5*time.Second, tlsCfg)
	if err != nil {
		r.Detail = fmt.Sprintf("%s is not reachable: %v", cfg.Upstream, err)
		return r
	}
	c.Close()
	r.OK, r.Detail = true, cfg.Upstream+" accepts connections"
	if tlsCfg != nil {
		r.Detail += " (TLS handshake verified)"
	}
	return r
}

func probeHandshake(ctx context.Context, cfg Options, tlsCfg *tls.Config) ProbeResult {
	r := ProbeResult{Check: "handshake"}
	conn, err := security.DialTLS(ctx, cfg.Upstream, 5*time.Second, tlsCfg)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	err = psync.Handshake(conn, br, psync.HandshakeConfig{User: cfg.UpstreamUser, Password: cfg.UpstreamPassword,
		ListeningPort: cfg.AnnouncePort, IPAddress: cfg.AnnounceIP})
	if err == nil {
		// The handshake tolerates what a stock replica tolerates (a -NOAUTH
		// to its first PING); a PING now must be answered.
		if _, err = conn.Write(psync.EncodeCommand("PING")); err == nil {
			var line string
			if line, err = psync.ReadLine(br, psync.MaxReplyLine); err == nil && line != "+PONG" {
				err = &upstreamReplyError{step: "PING", line: line}
			}
		}
	}
	if err != nil {
		reason := disconnectReason(err)
		r.Detail = fmt.Sprintf("%s: %v", reason, err)
		if a := advice(reason, cfg.ReplTimeout, false, nil); a != "" {
			r.Detail += "; " + a
		}
		return r
	}
	r.OK, r.Detail = true, "PING, AUTH and REPLCONF accepted"
	return r
}

func probeDataDir(cfg Options) ProbeResult {
	r := ProbeResult{Check: "data dir"}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		r.Detail = err.Error()
		return r
	}
	if err := probeWritable(cfg.DataDir); err != nil {
		r.Detail = fmt.Sprintf("%s is not writable: %v", cfg.DataDir, err)
		return r
	}
	free, err := freeBytes(cfg.DataDir)
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	if free < cfg.BacklogSize {
		r.Detail = fmt.Sprintf("%s has %s free; the backlog budget alone is %s (and two snapshots need room besides)",
			cfg.DataDir, humanBytes(free), humanBytes(cfg.BacklogSize))
		return r
	}
	r.OK, r.Detail = true, fmt.Sprintf("%s writable, %s free for a %s backlog budget (plus two snapshots)", cfg.DataDir, humanBytes(free), humanBytes(cfg.BacklogSize))
	return r
}
