// Package config turns flags, REPLPROXY_* environment variables and an
// optional YAML file into the daemon's configuration. Precedence: flags >
// environment > file > defaults. Every flag has a twin in the other two.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/replproxy/replproxy/metrics"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/psync/backlog"
)

// EnvPrefix prefixes the environment twin of every flag.
const EnvPrefix = "REPLPROXY_"

// Readiness modes, as metrics defines them.
const (
	ReadySynced  = metrics.ReadySynced
	ReadyProcess = metrics.ReadyProcess
)

// Web is the HTTP side: metrics, probes, status page.
type Web struct {
	Listen          string
	Readiness       string
	PerReplica      bool
	PerReplicaLimit int
	Pprof           bool
}

// Settings is the parsed result.
type Settings struct {
	Proxy     proxy.Config
	Web       Web
	LogLevel  slog.Level
	LogFormat string
	Version   bool
	// Sources says where each set value came from: flag, env or file.
	Sources map[string]string
	fs      *flag.FlagSet
}

// secretFlags are never printed.
var secretFlags = map[string]bool{"upstream-password": true, "requirepass": true, "replica-auth-password": true}

// UsageError is bad input: exit code 2, nothing touched.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

type raw struct {
	backlogSize              sizeValue
	tailBuffer               sizeValue
	intakeBuffer             sizeValue
	guard                    bool
	fanout                   bool
	fullSyncRate             sizeValue
	ackPolicy                string
	passFile, reqPassFile    string
	replicaPassFile          string
	refreshFrom              string
	refreshTrust             string
	fsync, logLevel, logFmt  string
	replTimeout, replicaTime time.Duration
	configFile               string
}

// newFlagSet defines every flag; it is the single list of options.
func newFlagSet(s *Settings, r *raw, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("replproxy", flag.ContinueOnError)
	fs.SetOutput(out)
	c := &s.Proxy
	r.backlogSize = sizeValue(proxy.DefaultBacklogSize)
	fs.StringVar(&r.configFile, "config", "", "YAML `FILE` with the same keys as the flags (lowest precedence after defaults)")
	fs.StringVar(&c.Upstream, "upstream", "", "origin Redis `HOST:PORT` to replicate from (required)")
	fs.StringVar(&c.Listen, "listen", "0.0.0.0:6380", "`HOST:PORT` where downstream replicas connect")
	fs.StringVar(&c.DataDir, "data-dir", "", "`DIR` for the snapshot, backlog and state (required)")
	fs.StringVar(&c.UpstreamUser, "upstream-user", "", "ACL user for AUTH to the origin")
	fs.StringVar(&c.UpstreamPassword, "upstream-password", "", "password for AUTH to the origin")
	fs.StringVar(&r.passFile, "upstream-password-file", "", "read the origin password from `FILE`")
	fs.StringVar(&c.RequirePass, "requirepass", "", "password downstream clients must AUTH with")
	fs.StringVar(&r.reqPassFile, "requirepass-file", "", "read the downstream password from `FILE`")
	fs.StringVar(&c.UsersFile, "users-file", "", "ACL users in Redis' ACL-file syntax (user NAME on >password, #sha256-hex, off); --requirepass stays the default user's password; reloaded on SIGHUP and when the `FILE` changes")
	fs.StringVar(&c.TLSListen, "tls-listen", "", "`HOST:PORT` of a TLS listener for replicas and clients, beside --listen or instead of it (--listen \"\")")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "PEM certificate `FILE` of the TLS listener (reloaded on change)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "PEM private key `FILE` of the TLS listener")
	fs.StringVar(&c.TLSCAFile, "tls-ca-cert-file", "", "PEM CA `FILE` client certificates must chain to")
	fs.StringVar(&c.TLSAuthClients, "tls-auth-clients", "yes", "client certificates on the TLS listener: yes (required), optional (verified when presented) or no, as Redis")
	fs.BoolVar(&c.TLSAuthUserFromCN, "tls-auth-user-from-cn", false, "authenticate a client with a verified certificate as the user named by its CN, when that user is on")
	fs.BoolVar(&c.UpstreamTLS, "upstream-tls", false, "connect to the upstream (and refresh from it) over TLS")
	fs.StringVar(&c.UpstreamTLSCAFile, "upstream-tls-ca-cert-file", "", "PEM CA `FILE` the upstream's certificate must chain to (default: the system roots)")
	fs.StringVar(&c.UpstreamTLSCertFile, "upstream-tls-cert-file", "", "PEM client certificate `FILE` for the upstream (for tls-auth-clients yes)")
	fs.StringVar(&c.UpstreamTLSKeyFile, "upstream-tls-key-file", "", "PEM private key `FILE` of the upstream client certificate")
	fs.StringVar(&c.UpstreamTLSServerName, "upstream-tls-server-name", "", "name the upstream's certificate must carry (default: the upstream's host)")
	fs.BoolVar(&c.UpstreamTLSInsecure, "upstream-tls-insecure-skip-verify", false, "do not verify the upstream's certificate (warned at start and every connect)")
	fs.StringVar(&c.RefreshMode, "snapshot-refresh", "eager", "eager: refresh the snapshot before the stream since it outgrows half the backlog budget; lazy: never in the background, let it lapse and refresh it only when a replica needs a full sync (held with keepalives meanwhile)")
	fs.StringVar(&r.refreshFrom, "snapshot-refresh-from", "replicas,upstream", "where snapshot refreshes come from, in the order tried: replicas (a downstream replica forks, the origin does not) and/or upstream (a fork on the origin); replicas alone never forks the origin and lets the backlog outgrow its budget instead")
	fs.StringVar(&c.RefreshUpstream, "snapshot-refresh-upstream", upstream.RefreshUpstreamOnDemand, "when the upstream (a fork on the origin) is asked for a refresh: on-demand, only when a replica needs a full sync and no replica could serve one; eager, also whenever the backlog budget calls for a refresh")
	fs.StringVar(&r.refreshTrust, "snapshot-refresh-trust", upstream.DefaultRefreshTrust, "identities whose replicas may serve snapshot refreshes, comma-separated: user:NAME (the ACL user a replica authenticated as; user:default is every client of a proxy without passwords or with --requirepass) and cn:NAME (a verified TLS client certificate's CN)")
	fs.DurationVar(&c.CalmWaitMax, "full-sync-calm-wait", proxy.DefaultCalmWaitMax, "after the upstream cut replproxy for falling behind a write burst, wait at most this long for the burst to calm before asking for a full sync (one asked during it is cut the same way); 0 does not wait")
	fs.StringVar(&c.ReplicaAuthUser, "replica-auth-user", "", "ACL user for AUTH at downstream replicas when refreshing from them (default: the upstream credentials)")
	fs.StringVar(&c.ReplicaAuthPassword, "replica-auth-password", "", "password for AUTH at downstream replicas when refreshing from them (default: the upstream credentials)")
	fs.StringVar(&r.replicaPassFile, "replica-auth-password-file", "", "read the replicas' password from `FILE`")
	fs.Var(&r.backlogSize, "backlog-size", "on-disk backlog budget, e.g. 512mb, 10gb")
	r.intakeBuffer = sizeValue(proxy.DefaultIntakeBuffer)
	fs.Var(&r.intakeBuffer, "intake-buffer", "stream received but not yet written to the backlog's files, kept in memory and served to replicas from there, so a write burst is taken at network speed while the disk catches up; a SIGKILL loses it from the data dir (replicas that have it are held until the upstream resends it); not used with --fsync always; 0 disables")
	r.tailBuffer = sizeValue(proxy.DefaultTailBuffer)
	fs.Var(&r.tailBuffer, "tail-buffer", "newest part of the backlog also kept in memory (with --tls-listen only), from which caught-up TLS replicas are fed with one write per wake-up; plaintext replicas get sendfile from the files, which measured faster; 0 disables")
	fs.DurationVar(&r.replTimeout, "repl-timeout", proxy.DefaultReplTimeout, "declare the upstream link dead after this much silence")
	fs.DurationVar(&r.replicaTime, "replica-timeout", proxy.DefaultReplicaTimeout, "drop an online replica silent for this long")
	fs.DurationVar(&c.HoldAhead, "hold-ahead", proxy.DefaultHoldAhead, "hold a replica whose PSYNC offset is ahead of the backlog (a lost unsynced tail) this long while the upstream refills it, before a full sync (0: the default)")
	fs.DurationVar(&c.FullSyncRetryMax, "full-sync-retry-max", upstream.DefaultFullSyncRetryMax, "longest wait between failed requests that cost the origin a fork (full syncs, snapshot refreshes); they back off exponentially from 15s, apart from cheap reconnects")
	fs.IntVar(&c.MaxClients, "max-clients", proxy.DefaultMaxClients, "downstream connections accepted at once (replicas and tools); more get -ERR max number of clients reached")
	fs.IntVar(&c.MaxParallelFullSyncs, "max-parallel-full-syncs", 0, "full syncs served at once; 0 = unlimited")
	fs.StringVar(&c.DelayedListen, "delayed-listen", "", "`HOST:PORT` for delayed replicas: they see the stream only up to what arrived at least --delay ago (a copy of the data as it was)")
	fs.DurationVar(&c.Delay, "delay", 0, "how far behind the delayed listener's replicas are kept, e.g. 1h")
	fs.DurationVar(&c.RDBOnlyMaxAge, "rdb-only-max-age", proxy.DefaultRDBOnlyMaxAge, "an rdb-only client (redis-cli --rdb) gets the stored snapshot only if younger than this, else a fresh one (a refresh, which prefers a replica); 0 serves the stored one whatever its age")
	fs.DurationVar(&c.RDBRefusalTTL, "rdb-refusal-ttl", proxy.DefaultRDBRefusalTTL, "a replica that hung up after a full sync without acknowledging it (it could not load the RDB version) gets an error naming the versions instead of the same payload, for this long")
	fs.StringVar(&r.ackPolicy, "ack-policy", "self", "offset acknowledged to the upstream: self (what the proxy stored) or replicas:N (what at least N online replicas acknowledged, so WAIT and min-replicas-to-write on the origin count replicas that have the data)")
	fs.Var(&r.fullSyncRate, "full-sync-rate-limit", "bytes per second for all full syncs served together, e.g. 100mb (0: no limit), beside --max-parallel-full-syncs")
	fs.BoolVar(&r.fanout, "fanout-writer", true, "write each upstream read straight to the caught-up plaintext replicas from memory (one non-blocking write each), handing a replica to its own sendfile loop when its socket is full or a read fills the follower's buffer (more is waiting: the replicas then copy in parallel); false: every replica waits for appends and sendfiles them")
	fs.BoolVar(&r.guard, "guard-empty-origin", true, "hold a new upstream history whose snapshot has fewer keys than --guard-min-keys-ratio of the current one (an origin restarted empty), keep serving the current data, and wait for REPLPROXY GUARD ACCEPT or POST /guard/accept")
	fs.Float64Var(&c.GuardMinKeysRatio, "guard-min-keys-ratio", upstream.DefaultGuardMinKeysRatio, "share of the current snapshot's keys below which the guard holds a new history")
	fs.StringVar(&r.fsync, "fsync", "everysec", "backlog fsync policy: always, everysec or no")
	fs.IntVar(&c.AnnouncePort, "announce-port", 0, "port announced to the origin (REPLCONF listening-port); default the listen port")
	fs.StringVar(&c.AnnounceIP, "announce-ip", "", "IP announced to the origin (REPLCONF ip-address)")
	fs.StringVar(&c.AnnounceVersion, "announce-version", "", "release X.Y.Z announced to the origin (REPLCONF version); a Valkey 9 origin writes RDB 80 for 9.0+, loadable only by Valkey 9+ replicas; empty: none, the portable RDB 11")
	fs.StringVar(&s.Web.Listen, "metrics-listen", "0.0.0.0:9380", "`HOST:PORT` for /metrics, /livez, /readyz and the status page; empty disables")
	fs.StringVar(&s.Web.Readiness, "readiness", ReadySynced, "what /readyz means: synced (upstream link up and a snapshot) or process (sidecar in the master pod)")
	fs.BoolVar(&s.Web.PerReplica, "metrics-per-replica", false, "export per-replica series")
	fs.IntVar(&s.Web.PerReplicaLimit, "metrics-per-replica-limit", 50, "at most this many replicas get per-replica series")
	fs.BoolVar(&s.Web.Pprof, "pprof", false, "serve /debug/pprof on the metrics listener")
	fs.StringVar(&c.MetricsTLSCertFile, "metrics-tls-cert-file", "", "PEM certificate `FILE`: serve the metrics listener over HTTPS (reloaded on change)")
	fs.StringVar(&c.MetricsTLSKeyFile, "metrics-tls-key-file", "", "PEM private key `FILE` of the metrics certificate")
	fs.DurationVar(&c.ReloadInterval, "reload-interval", proxy.DefaultReloadInterval, "how often certificate and users files are checked for changes (SIGHUP reloads at once)")
	fs.StringVar(&r.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&r.logFmt, "log-format", "json", "json or text")
	fs.BoolVar(&s.Version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: replproxy --upstream HOST:PORT --data-dir DIR [flags]\n"+
			"       replproxy check-config [--probe] [flags]  validate and print the effective configuration;\n"+
			"                                      --probe also tries the upstream handshake and the data dir\n"+
			"       replproxy inspect [--json] DATA-DIR  show what a data dir holds\n"+
			"       replproxy healthcheck [--addr HOST:PORT]\n\n"+
			"Every flag can also be set as %s<FLAG_NAME> (e.g. %sUPSTREAM) or as a key of the --config file.\n"+
			"Precedence: flags > environment > file > defaults.\n\n", EnvPrefix, EnvPrefix)
		fs.PrintDefaults()
	}
	return fs
}

// Parse reads flags, then the environment, then the config file.
func Parse(args []string, lookup func(string) (string, bool), out io.Writer) (*Settings, error) {
	return parse(args, lookup, out, false)
}

// CheckArgs validates arguments as Parse does, but without touching the
// filesystem (secret files, data dir): for checking manifests offline.
func CheckArgs(args []string, lookup func(string) (string, bool)) error {
	_, err := parse(args, lookup, io.Discard, true)
	return err
}

func parse(args []string, lookup func(string) (string, bool), out io.Writer, offline bool) (*Settings, error) {
	s := &Settings{Sources: map[string]string{}}
	var r raw
	fs := newFlagSet(s, &r, out)
	s.fs = fs
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, UsageError{err}
	}
	if fs.NArg() > 0 {
		return nil, UsageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	fs.Visit(func(f *flag.Flag) { s.Sources[f.Name] = "flag" })
	if err := applyEnv(fs, lookup, s.Sources); err != nil {
		return nil, UsageError{err}
	}
	if r.configFile != "" && !offline {
		if err := applyFile(fs, r.configFile, s.Sources); err != nil {
			return nil, UsageError{err}
		}
	}
	if s.Version {
		return s, nil
	}
	if r.configFile != "" {
		s.Proxy.ConfigFile, _ = filepath.Abs(r.configFile) // INFO's config_file, as Redis shows it
	}
	if offline {
		r.passFile, r.reqPassFile, r.replicaPassFile = "", "", ""
	}
	if err := s.finish(&r, offline); err != nil {
		return nil, UsageError{err}
	}
	return s, nil
}

func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool), sources map[string]string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if sources[f.Name] != "" {
			return
		}
		name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookup(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
			sources[f.Name] = "env"
		}
	})
	return errors.Join(errs...)
}

func applyFile(fs *flag.FlagSet, path string, sources map[string]string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			errs = append(errs, fmt.Errorf("config file %s: unknown key %q", path, k))
			continue
		}
		if sources[k] != "" {
			continue // flags and environment win
		}
		var v string
		switch x := m[k].(type) {
		case string:
			v = x
		case bool:
			v = strconv.FormatBool(x)
		case float64:
			v = strconv.FormatFloat(x, 'f', -1, 64)
		default:
			errs = append(errs, fmt.Errorf("config file %s: key %q: want a scalar, got %T", path, k, x))
			continue
		}
		if err := fs.Set(k, v); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: key %q: %w", path, k, err))
			continue
		}
		sources[k] = "file"
	}
	return errors.Join(errs...)
}

func (s *Settings) finish(r *raw, offline bool) error {
	c := &s.Proxy
	var errs []error
	var err error
	if err = s.LogLevel.UnmarshalText([]byte(r.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("log-level %q: want debug, info, warn or error", r.logLevel))
	}
	s.LogFormat = r.logFmt
	if r.logFmt != "json" && r.logFmt != "text" {
		errs = append(errs, fmt.Errorf("log-format %q: want json or text", r.logFmt))
	}
	if c.Fsync, err = backlog.ParseFsyncPolicy(r.fsync); err != nil {
		errs = append(errs, err)
	}
	c.GuardDisabled = !r.guard
	c.DisableFanout = !r.fanout
	c.FullSyncRateLimit = int64(r.fullSyncRate)
	switch n, ok := strings.CutPrefix(r.ackPolicy, "replicas:"); {
	case r.ackPolicy == "self":
	case ok:
		if c.AckReplicas, err = strconv.Atoi(n); err != nil || c.AckReplicas < 1 {
			errs = append(errs, fmt.Errorf("ack-policy %q: want self or replicas:N with N >= 1", r.ackPolicy))
		}
	default:
		errs = append(errs, fmt.Errorf("ack-policy %q: want self or replicas:N with N >= 1", r.ackPolicy))
	}
	c.BacklogSize = int64(r.backlogSize)
	c.IntakeBuffer = int64(r.intakeBuffer)
	if c.IntakeBuffer == 0 {
		c.IntakeBuffer = -1 // as --tail-buffer 0
	}
	c.TailBuffer = int64(r.tailBuffer)
	if c.TailBuffer == 0 {
		c.TailBuffer = -1 // 0 on the command line disables it; in Config it picks the default
	}
	c.ReplTimeout, c.ReplicaTimeout = r.replTimeout, r.replicaTime
	if c.UpstreamPassword, err = secret(c.UpstreamPassword, r.passFile, "upstream-password"); err != nil {
		errs = append(errs, err)
	}
	if c.RequirePass, err = secret(c.RequirePass, r.reqPassFile, "requirepass"); err != nil {
		errs = append(errs, err)
	}
	if c.ReplicaAuthPassword, err = secret(c.ReplicaAuthPassword, r.replicaPassFile, "replica-auth-password"); err != nil {
		errs = append(errs, err)
	}
	c.RefreshFrom = nil
	for _, src := range strings.Split(r.refreshFrom, ",") {
		c.RefreshFrom = append(c.RefreshFrom, strings.TrimSpace(src))
	}
	c.RefreshTrust = nil
	for _, id := range strings.Split(r.refreshTrust, ",") {
		c.RefreshTrust = append(c.RefreshTrust, strings.TrimSpace(id))
	}
	if c.CalmWaitMax == 0 {
		c.CalmWaitMax = -1 // 0 on the command line disables it; in Config it picks the default
	}
	// Semantic checks (required options, ranges) are proxy.Config's, made
	// once by Validate below; this layer checks only what it parses.
	if st, err := os.Stat(c.DataDir); c.DataDir != "" && !offline && err == nil && !st.IsDir() {
		errs = append(errs, fmt.Errorf("data-dir %s is not a directory", c.DataDir))
	}
	if c.Listen == "" && c.TLSListen == "" {
		errs = append(errs, errors.New("no listener: --listen and --tls-listen are both empty"))
	}
	if s.Web.Readiness != ReadySynced && s.Web.Readiness != ReadyProcess {
		errs = append(errs, fmt.Errorf("readiness %q: want synced or process", s.Web.Readiness))
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	} else if !offline {
		if err := proxy.CheckFiles(*c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func secret(value, file, name string) (string, error) {
	if file == "" {
		return value, nil
	}
	if value != "" {
		return "", fmt.Errorf("%s and %s-file are both set; use one", name, name)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s-file: %w", name, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// Logger builds the slog logger the settings ask for.
func (s *Settings) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: s.LogLevel}
	if s.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// Effective renders every option with its value and source, secrets
// redacted, as check-config prints it.
func (s *Settings) Effective() string {
	var b strings.Builder
	s.fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "version" {
			return
		}
		v := f.Value.String()
		if secretFlags[f.Name] && v != "" {
			v = "<redacted>"
		}
		src := s.Sources[f.Name]
		if src == "" {
			src = "default"
		}
		fmt.Fprintf(&b, "%-26s %-30q (%s)\n", f.Name+":", v, src)
	})
	return b.String()
}

// FlagTable is the markdown table of every option, for the README.
func FlagTable() string {
	var s Settings
	var r raw
	fs := newFlagSet(&s, &r, io.Discard)
	var b strings.Builder
	b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		arg := ""
		if name != "" {
			arg = " " + name
		}
		def := f.DefValue
		if def != "" {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `--%s%s` | `%s%s` | %s | %s |\n", f.Name, arg, EnvPrefix,
			strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")), def, strings.ReplaceAll(usage, "|", "\\|"))
	})
	return b.String()
}

// sizeValue is a byte count written as Redis writes memory sizes: 1gb,
// 512mb, 64kb or plain bytes (k/m/g are powers of 1000, kb/mb/gb of 1024).
type sizeValue int64

func (s *sizeValue) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeValue) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = sizeValue(n)
	return nil
}

// ParseSize parses "1gb", "512mb", "64kb", "2g" or plain bytes.
func ParseSize(v string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(v))
	units := []struct {
		suffix string
		mult   int64
	}{{"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}, {"g", 1e9}, {"m", 1e6}, {"k", 1e3}, {"b", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (kb, mb, gb)", v)
	}
	return n * mult, nil
}
