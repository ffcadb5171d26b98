// Command replproxy is a replication sidecar proxy for stock Redis: one
// replica to its upstream, a master to any number of stock replicas.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/config"
	"github.com/replproxy/replproxy/metrics"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "inspect":
			return inspect(args[1:], stdout, stderr)
		case "check-config":
			return checkConfig(args[1:], stdout, stderr)
		case "healthcheck":
			return healthcheck(args[1:], stdout, stderr)
		}
	}
	st, err := config.Parse(args, os.LookupEnv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "replproxy:", err)
		return 2
	}
	if st.Version {
		fmt.Fprintf(stdout, "replproxy %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	logger := st.Logger(stderr)
	cfg := st.Proxy
	cfg.Version = version
	obs := metrics.NewObserver()
	cfg.Observer = obs
	p, err := proxy.New(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "replproxy:", err)
		return 2
	}
	logger.Info("starting", "version", version, "uid", os.Getuid())
	if os.Getuid() == 0 {
		logger.Warn("running as root; the container image runs as 65532")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var webDone chan error
	if web := st.Web; web.Listen != "" {
		ln, err := net.Listen("tcp", web.Listen)
		if err != nil {
			logger.Error("metrics listener failed", "addr", web.Listen, "err", err)
			return 1
		}
		if tc := p.MetricsTLSConfig(); tc != nil {
			ln = tls.NewListener(ln, tc)
		}
		reg := metrics.NewRegistry(p, obs, metrics.Options{PerReplica: web.PerReplica, PerReplicaLimit: web.PerReplicaLimit, Version: version})
		h := metrics.Handler(p, reg, metrics.HandlerOptions{Readiness: web.Readiness, EnablePprof: web.Pprof})
		webDone = make(chan error, 1)
		go func() { webDone <- metrics.Serve(ctx, ln, h) }()
		logger.Info("metrics listening", "addr", ln.Addr().String(), "readiness", web.Readiness, "https", p.MetricsTLSConfig() != nil)
	}
	// SIGHUP re-reads certificates and users (they are also watched).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	hupDone := make(chan struct{})
	go func() {
		defer close(hupDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				logger.Info("SIGHUP: reloading certificates and users")
				_ = p.Reload() // each failure is logged where it happens
			}
		}
	}()
	code := 0
	if err := p.Run(ctx); err != nil {
		logger.Error("replproxy failed", "err", err)
		code = 1
	}
	stop()
	<-hupDone
	if webDone != nil {
		if err := <-webDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server", "err", err)
		}
	}
	return code
}

// checkConfig validates flags, environment and file as the daemon would,
// and prints the effective configuration with secrets redacted.
func checkConfig(args []string, stdout, stderr io.Writer) int {
	probe := false
	rest := args[:0:0]
	for _, a := range args {
		if a == "--probe" || a == "-probe" {
			probe = true
			continue
		}
		rest = append(rest, a)
	}
	st, err := config.Parse(rest, os.LookupEnv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "replproxy check-config:", err)
		return 2
	}
	fmt.Fprint(stdout, st.Effective())
	if !probe {
		return 0
	}
	code := 0
	for _, r := range proxy.Probe(context.Background(), st.Proxy) {
		verdict := "ok"
		if !r.OK {
			verdict, code = "FAIL", 1
		}
		fmt.Fprintf(stdout, "probe %-9s %-4s %s\n", r.Check+":", verdict, r.Detail)
	}
	return code
}

// healthcheck probes /livez of a running replproxy: the container image's
// HEALTHCHECK, which has no shell or curl.
func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9380", "metrics `HOST:PORT` of the replproxy to probe")
	path := fs.String("path", "/livez", "endpoint to probe (/livez or /readyz)")
	useTLS := fs.Bool("tls", false, "probe over HTTPS (--metrics-tls-cert-file); the certificate is not verified: this checks liveness, and sends nothing secret")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := http.Client{Timeout: 3 * time.Second}
	scheme := "http://"
	if *useTLS {
		scheme = "https://"
		c.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // liveness only
	}
	resp, err := c.Get(scheme + *addr + *path)
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy:", resp.Status)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

func inspect(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	keys := fs.Bool("keys", true, "show key counts per database")
	types := fs.Bool("types", false, "scan the snapshot to count keys by type too")
	delay := fs.Duration("delay", 0, "say whether the backlog holds this much stream (the --delay of a delayed listener)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: replproxy inspect [--json] [--keys=false] [--types] [--delay D] DATA-DIR")
		return 2
	}
	in, err := store.Inspect(context.Background(), fs.Arg(0), store.InspectOptions{Keys: *keys, Types: *types})
	if err != nil {
		fmt.Fprintln(stderr, "replproxy inspect:", err)
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(in)
		return 0
	}
	w := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	w("replid:               %s", in.History.ReplID)
	w("replid2:              %s", in.History.ReplID2)
	w("second_replid_offset: %d", in.History.SecondOffset)
	w("backlog:              [%d, %d] %d bytes in %d segments (tag %s, gaps %d)",
		in.Backlog.First, in.Backlog.End, in.Backlog.Bytes, in.Backlog.Segments, in.Backlog.Tag, in.Backlog.Gaps)
	if s := in.Snapshot; s != nil {
		w("snapshot:             %s offset %d, %d bytes, %s version %d, taken %s",
			s.Name, s.Offset, s.Size, s.Magic, s.RDBVersion, s.Created.Format(time.RFC3339))
		w("snapshot source:      %s", vocab.SnapshotSource(s))
	} else {
		w("snapshot:             none")
	}
	auxKeys := make([]string, 0, len(in.Aux))
	for k := range in.Aux {
		auxKeys = append(auxKeys, k)
	}
	sort.Strings(auxKeys)
	for _, k := range auxKeys {
		w("  aux %-16s %s", k+":", in.Aux[k])
	}
	for _, ks := range in.Keyspace {
		types := make([]string, 0, len(ks.ByType))
		for t, n := range ks.ByType {
			types = append(types, fmt.Sprintf("%s=%d", t, n))
		}
		sort.Strings(types)
		w("db%d: keys=%d expires=%d %s", ks.DB, ks.Keys, ks.Expires, strings.Join(types, " "))
	}
	if c := in.Backlog.Covered; !c.IsZero() {
		w("backlog holds:        at least the stream since %s (%s)", c.Format(time.RFC3339), time.Since(c).Round(time.Second))
	}
	if *delay > 0 {
		switch c := in.Backlog.Covered; {
		case c.IsZero():
			w("delay %v:           unknown (the backlog is one segment; its start time is not kept)", *delay)
		case time.Since(c) >= *delay:
			w("delay %v:           covered", *delay)
		default:
			w("delay %v:           NOT covered: the backlog holds about %s at the current write rate; raise --backlog-size", *delay, time.Since(c).Round(time.Second))
		}
	}
	if r := in.Replicaof; r != nil {
		w("upstream:             %s, set by REPLICAOF at %s (followed while --upstream is %s)", r.Upstream, r.At.Format(time.RFC3339), r.Configured)
	}
	if h := in.Held; h != nil {
		w("guard holds:          history %s from offset %d since %s: %d keys against the served %d; REPLPROXY GUARD ACCEPT installs it",
			h.Snapshot.ReplID, h.Snapshot.Offset, h.Since.Format(time.RFC3339), h.NewKeys, h.CurKeys)
	}
	if in.SnapshotStale {
		w("snapshot lapsed:      the backlog starts after it; the next full sync refreshes it first")
	}
	if in.Consistent {
		w("consistent:           yes")
	} else {
		w("consistent:           no (%s)", in.Problem)
	}
	return 0
}
