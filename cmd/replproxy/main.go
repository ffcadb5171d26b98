// Command replproxy is a replication sidecar proxy for stock Redis: one
// replica to its upstream, a master to any number of stock replicas.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/metrics"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/psync/backlog"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

const envPrefix = "REPLPROXY_"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is bad input: exit code 2, nothing touched.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "inspect" {
		return inspect(args[1:], stdout, stderr)
	}
	cfg, web, logger, showVersion, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "replproxy:", err)
		return 2
	}
	if showVersion {
		fmt.Fprintf(stdout, "replproxy %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	obs := metrics.NewObserver()
	cfg.Observer = obs
	p, err := proxy.New(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "replproxy:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var webDone chan error
	if web.listen != "" {
		ln, err := net.Listen("tcp", web.listen)
		if err != nil {
			logger.Error("metrics listener failed", "addr", web.listen, "err", err)
			return 1
		}
		reg := metrics.NewRegistry(p, obs, metrics.Options{PerReplica: web.perReplica, PerReplicaLimit: web.perReplicaLimit, Version: version})
		h := metrics.Handler(p, reg, metrics.HandlerOptions{Readiness: web.readiness, EnablePprof: web.pprof})
		webDone = make(chan error, 1)
		go func() { webDone <- metrics.Serve(ctx, ln, h) }()
		logger.Info("metrics listening", "addr", ln.Addr().String(), "readiness", web.readiness)
	}
	code := 0
	if err := p.Run(ctx); err != nil {
		logger.Error("replproxy failed", "err", err)
		code = 1
	}
	stop()
	if webDone != nil {
		if err := <-webDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server", "err", err)
		}
	}
	return code
}

// webConfig is the HTTP side: metrics, probes, status page.
type webConfig struct {
	listen          string
	readiness       string
	perReplica      bool
	perReplicaLimit int
	pprof           bool
}

// parseFlags reads flags, then fills every flag not given on the command
// line from REPLPROXY_<FLAG_NAME>: flags win over the environment.
func parseFlags(args []string, stderr io.Writer) (proxy.Config, webConfig, *slog.Logger, bool, error) {
	fs := flag.NewFlagSet("replproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg          proxy.Config
		backlogSize  = sizeFlag(proxy.DefaultBacklogSize)
		passFile     string
		reqPassFile  string
		fsync        string
		logLevel     string
		logFormat    string
		showVersion  bool
		replTimeout  time.Duration
		replicaTmout time.Duration
		web          webConfig
	)
	fs.StringVar(&cfg.Upstream, "upstream", "", "origin Redis `HOST:PORT` to replicate from (required)")
	fs.StringVar(&cfg.Listen, "listen", "0.0.0.0:6380", "`HOST:PORT` where downstream replicas connect")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "`DIR` for the snapshot, backlog and state (required)")
	fs.StringVar(&cfg.UpstreamUser, "upstream-user", "", "ACL user for AUTH to the origin")
	fs.StringVar(&cfg.UpstreamPassword, "upstream-password", "", "password for AUTH to the origin")
	fs.StringVar(&passFile, "upstream-password-file", "", "read the origin password from `FILE`")
	fs.StringVar(&cfg.RequirePass, "requirepass", "", "password downstream clients must AUTH with")
	fs.StringVar(&reqPassFile, "requirepass-file", "", "read the downstream password from `FILE`")
	fs.Var(&backlogSize, "backlog-size", "on-disk backlog budget, e.g. 512mb, 10gb")
	fs.DurationVar(&replTimeout, "repl-timeout", proxy.DefaultReplTimeout, "declare the upstream link dead after this much silence")
	fs.DurationVar(&replicaTmout, "replica-timeout", proxy.DefaultReplicaTimeout, "drop an online replica silent for this long")
	fs.IntVar(&cfg.MaxParallelFullSyncs, "max-parallel-full-syncs", 0, "full syncs served at once; 0 = unlimited")
	fs.StringVar(&fsync, "fsync", "everysec", "backlog fsync policy: always, everysec or no")
	fs.IntVar(&cfg.AnnouncePort, "announce-port", 0, "port announced to the origin (REPLCONF listening-port); default the listen port")
	fs.StringVar(&cfg.AnnounceIP, "announce-ip", "", "IP announced to the origin (REPLCONF ip-address)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "json", "json or text")
	fs.StringVar(&web.listen, "metrics-listen", "0.0.0.0:9380", "`HOST:PORT` for /metrics, /livez, /readyz and the status page; empty disables")
	fs.StringVar(&web.readiness, "readiness", metrics.ReadySynced, "what /readyz means: synced (upstream link up and a snapshot) or process (sidecar in the master pod)")
	fs.BoolVar(&web.perReplica, "metrics-per-replica", false, "export per-replica series")
	fs.IntVar(&web.perReplicaLimit, "metrics-per-replica-limit", 50, "at most this many replicas get per-replica series")
	fs.BoolVar(&web.pprof, "pprof", false, "serve /debug/pprof on the metrics listener")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: replproxy --upstream HOST:PORT --data-dir DIR [flags]\n"+
			"       replproxy inspect [--json] [--keys=false] DATA-DIR\n\n"+
			"Every flag can also be set as %s<FLAG_NAME>, e.g. %sUPSTREAM; flags win.\n\n", envPrefix, envPrefix)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, web, nil, false, err
	}
	if fs.NArg() > 0 {
		return cfg, web, nil, false, usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return cfg, web, nil, false, err
	}
	if showVersion {
		return cfg, web, nil, true, nil
	}
	var errs []error
	level, err := parseLevel(logLevel)
	errs = append(errs, err)
	if logFormat != "json" && logFormat != "text" {
		errs = append(errs, fmt.Errorf("--log-format %q: want json or text", logFormat))
	}
	cfg.Fsync, err = backlog.ParseFsyncPolicy(fsync)
	errs = append(errs, err)
	cfg.BacklogSize = int64(backlogSize)
	cfg.ReplTimeout, cfg.ReplicaTimeout = replTimeout, replicaTmout
	cfg.Version = version
	if cfg.UpstreamPassword, err = secret(cfg.UpstreamPassword, passFile, "upstream-password"); err != nil {
		errs = append(errs, err)
	}
	if cfg.RequirePass, err = secret(cfg.RequirePass, reqPassFile, "requirepass"); err != nil {
		errs = append(errs, err)
	}
	if cfg.Upstream == "" {
		errs = append(errs, errors.New("--upstream is required"))
	}
	if cfg.DataDir == "" {
		errs = append(errs, errors.New("--data-dir is required"))
	} else if st, err := os.Stat(cfg.DataDir); err == nil && !st.IsDir() {
		errs = append(errs, fmt.Errorf("--data-dir %s is not a directory", cfg.DataDir))
	}
	if web.readiness != metrics.ReadySynced && web.readiness != metrics.ReadyProcess {
		errs = append(errs, fmt.Errorf("--readiness %q: want synced or process", web.readiness))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, web, nil, false, err
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(stderr, opts)
	if logFormat == "text" {
		h = slog.NewTextHandler(stderr, opts)
	}
	return cfg, web, slog.New(h), false, nil
}

// applyEnv sets each flag not given on the command line from the
// environment.
func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookup(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func secret(value, file, name string) (string, error) {
	if file == "" {
		return value, nil
	}
	if value != "" {
		return "", fmt.Errorf("--%s and --%s-file are both set; use one", name, name)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", name, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func inspect(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	keys := fs.Bool("keys", true, "parse the snapshot and count keys per database and type")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: replproxy inspect [--json] [--keys=false] DATA-DIR")
		return 2
	}
	in, err := proxy.Inspect(fs.Arg(0), *keys)
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
	if in.Consistent {
		w("consistent:           yes")
	} else {
		w("consistent:           no (%s)", in.Problem)
	}
	return 0
}
