package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/tlsconf"
	"github.com/replproxy/replproxy/proxy/command"
	"github.com/replproxy/replproxy/proxy/downstream"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/backlog"
)

// Config is everything the daemon needs; cmd/replproxy fills it from flags.
type Config struct {
	Upstream         string // HOST:PORT of the origin
	UpstreamUser     string
	UpstreamPassword string
	Listen           string // HOST:PORT for downstream replicas
	DataDir          string

	BacklogSize int64 // on-disk budget for the backlog, bytes
	// TailBuffer keeps the newest bytes of the backlog in memory too, and
	// feeds caught-up TLS replicas from there (plaintext ones get sendfile,
	// which measured faster). Allocated only with a TLS listener. 0 picks
	// the default; negative disables it.
	TailBuffer int64
	// IntakeBuffer is how far the backlog's files may trail the stream
	// received: a burst is taken into memory (and served from there) at
	// network speed while the disk catches up. 0 picks the default;
	// negative disables it. Not used with --fsync always.
	IntakeBuffer int64
	SegmentSize  int64 // backlog segment size; 0 picks one from BacklogSize
	Fsync        backlog.FsyncPolicy
	ReplTimeout  time.Duration // upstream silence before the link is declared dead
	AnnouncePort int           // REPLCONF listening-port upstream; 0 uses the listen port
	AnnounceIP   string
	// AnnounceVersion is sent upstream as REPLCONF version X.Y.Z: a Valkey
	// 9 origin then writes RDB 80 (VALKEY080) for 9.0+, which only Valkey
	// 9+ replicas load. Empty (the default) sends none and gets the
	// portable RDB 11.
	AnnounceVersion string

	RequirePass string // the default user's password; empty: none (unless the users file sets one)
	// UsersFile holds ACL users (a subset of Redis' ACL-file syntax).
	UsersFile string

	// TLSListen is a TLS listener for replicas and clients, beside Listen
	// or instead of it (Listen ""), served with TLSCertFile/TLSKeyFile.
	// TLSAuthClients (yes, no, optional; default yes, as Redis) says
	// whether clients must present a certificate chaining to TLSCAFile.
	TLSListen         string
	TLSCertFile       string
	TLSKeyFile        string
	TLSCAFile         string
	TLSAuthClients    string
	TLSAuthUserFromCN bool // a verified client certificate's CN names the user it is authenticated as

	// UpstreamTLS dials the upstream (and refreshes) over TLS, verifying
	// its certificate against UpstreamTLSCAFile (system roots without) and
	// its name (UpstreamTLSServerName, default the upstream's host).
	UpstreamTLS           bool
	UpstreamTLSCertFile   string // a client certificate, for tls-auth-clients yes
	UpstreamTLSKeyFile    string
	UpstreamTLSCAFile     string
	UpstreamTLSServerName string
	UpstreamTLSInsecure   bool // skip verification: warned at start and every connect

	// MetricsTLSCertFile and MetricsTLSKeyFile make the metrics listener
	// serve HTTPS (the daemon owns the reloads; cmd/replproxy serves it).
	MetricsTLSCertFile string
	MetricsTLSKeyFile  string
	// ReloadInterval is how often certificate and users files are checked
	// for changes (SIGHUP reloads at once). Default 5s.
	ReloadInterval       time.Duration
	ReplicaTimeout       time.Duration
	MaxParallelFullSyncs int // 0 = unlimited
	// DelayedListen serves delayed replicas: they see the stream only up to
	// what arrived at least Delay ago (plaintext; auth as on Listen).
	DelayedListen string
	Delay         time.Duration
	// RDBRefusalTTL: a replica that hung up after a full sync without
	// ACKing (it could not load the RDB version) gets an error instead of
	// the same payload for this long. Default 10m.
	RDBRefusalTTL time.Duration
	// RDBOnlyMaxAge: an rdb-only client (redis-cli --rdb) gets the stored
	// snapshot only if it is younger than this, else a fresh one; 0 serves
	// the stored one whatever its age.
	RDBOnlyMaxAge time.Duration
	// AckReplicas is --ack-policy replicas:N: the proxy ACKs the upstream
	// with the offset N online replicas have acknowledged (0: its own).
	AckReplicas int
	// FullSyncRateLimit caps the bytes/s of all full syncs served together
	// (0 = no cap), so a wave of replicas cannot saturate a link.
	FullSyncRateLimit int64
	// MaxClients bounds downstream connections (replicas and tools), and
	// with it the memory they can take; as Redis' maxclients.
	MaxClients int
	// DisableFanout: caught-up plaintext replicas wait for appends and
	// sendfile them from the backlog files, one goroutine each, instead of
	// being written to by the follower straight from its read buffer.
	DisableFanout bool
	// ConfigFile is the --config file, for INFO (informational only).
	ConfigFile string

	// RefreshMode is RefreshEager (refresh before the stream since the
	// snapshot outgrows the budget; the default) or RefreshLazy (never in
	// the background: the snapshot lapses, and is refreshed only when a
	// replica needs a full sync).
	RefreshMode string
	// RefreshFrom is where snapshot refreshes are fetched from, in order:
	// SourceReplicas (a downstream replica forks, the origin does not)
	// and/or SourceUpstream. Default: replicas, then upstream.
	RefreshFrom []string
	// RefreshUpstream says when the upstream (a fork on the origin) is
	// asked for a refresh: RefreshUpstreamOnDemand (the default) only when
	// a replica needs a full sync and the snapshot has lapsed;
	// RefreshUpstreamEager also whenever the budget calls for a refresh and
	// no replica could serve it. With upstream alone in RefreshFrom the
	// operator asked for upstream refreshes: they are eager.
	RefreshUpstream string
	// RefreshTrust names the identities whose replicas may serve a refresh:
	// "user:NAME" (the ACL user a replica authenticated as; "default" is
	// also every client of a proxy without passwords) and "cn:NAME" (the
	// CN of a verified TLS client certificate). Default: user:default.
	RefreshTrust []string
	// CalmWaitMax bounds how long a full sync after the upstream cut
	// replproxy for falling behind waits for the origin's write burst to
	// calm (a full sync asked during it is cut the same way). 0 picks the
	// default; negative disables the wait.
	CalmWaitMax time.Duration
	// ReplicaAuthUser and ReplicaAuthPassword authenticate refreshes at
	// replicas; both empty: the upstream credentials.
	ReplicaAuthUser     string
	ReplicaAuthPassword string

	// RefreshRatio: fetch a fresh snapshot once the stream since the current
	// one exceeds RefreshRatio × BacklogSize. Default 0.5.
	RefreshRatio float64
	// FullSyncRetryMin and FullSyncRetryMax bound the backoff between
	// attempts that cost the origin a fork (full syncs, refreshes), apart
	// from the cheap reconnect backoff.
	FullSyncRetryMin time.Duration
	FullSyncRetryMax time.Duration
	// HoldAhead is how long a PSYNC just ahead of our end is held while the
	// upstream catches up, before it becomes a full sync.
	HoldAhead time.Duration
	// GuardDisabled turns the empty-origin guard off; GuardMinKeysRatio
	// (default 0.5) is the share of the current snapshot's keys below which
	// a new history is held.
	GuardDisabled     bool
	GuardMinKeysRatio float64
	// Version is reported in INFO.
	Version string
	// Observer receives events for histograms; nil ignores them.
	Observer Observer

	// syncFile replaces fsync in the backlog: a test hook.
	syncFile func(*os.File) error
}

// Observer receives the events that metrics turn into distributions. The
// proxy calls it inline, so implementations must be cheap.
type Observer interface {
	ObserveAck(lagBytes int64, lagSeconds float64)
	ObserveUpstreamFullSync(seconds float64)
	ObserveDownstreamFullSync(seconds float64)
}

type nopObserver struct{}

func (nopObserver) ObserveAck(int64, float64)         {}
func (nopObserver) ObserveUpstreamFullSync(float64)   {}
func (nopObserver) ObserveDownstreamFullSync(float64) {}

// Defaults for the zero values of Config.
const (
	DefaultBacklogSize    = 1 << 30
	DefaultReplTimeout    = 60 * time.Second
	DefaultReplicaTimeout = 60 * time.Second
	DefaultHoldAhead      = 10 * time.Second
	DefaultReloadInterval = 5 * time.Second
	DefaultTailBuffer     = 16 << 20
	DefaultIntakeBuffer   = 64 << 20
	DefaultRDBRefusalTTL  = 10 * time.Minute
	DefaultRDBOnlyMaxAge  = time.Minute
	DefaultCalmWaitMax    = 2 * time.Minute
	// DefaultMaxClients: a session costs ~40 KB when idle (buffers and
	// goroutine stacks), so a flood of connections stays under ~40 MB.
	DefaultMaxClients = 1000
	minSegmentSize    = 64 << 10
	maxSegmentSize    = 64 << 20
)

func (c *Config) setDefaults() {
	if c.BacklogSize == 0 {
		c.BacklogSize = DefaultBacklogSize
	}
	if c.SegmentSize == 0 {
		// Trimming works in whole segments: keep at least 16 per budget.
		c.SegmentSize = min(max(c.BacklogSize/16, minSegmentSize), maxSegmentSize)
	}
	if c.ReplTimeout == 0 {
		c.ReplTimeout = DefaultReplTimeout
	}
	if c.ReplicaTimeout == 0 {
		c.ReplicaTimeout = DefaultReplicaTimeout
	}
	if c.RefreshRatio == 0 {
		c.RefreshRatio = 0.5
	}
	if c.FullSyncRetryMin == 0 {
		c.FullSyncRetryMin = upstream.DefaultFullSyncRetryMin
	}
	if c.FullSyncRetryMax == 0 {
		c.FullSyncRetryMax = max(upstream.DefaultFullSyncRetryMax, c.FullSyncRetryMin)
	}
	if c.RefreshMode == "" {
		c.RefreshMode = upstream.RefreshEager
	}
	if len(c.RefreshFrom) == 0 {
		c.RefreshFrom = []string{upstream.SourceReplicas, upstream.SourceUpstream}
	}
	if c.RefreshUpstream == "" {
		c.RefreshUpstream = upstream.RefreshUpstreamOnDemand
	}
	if len(c.RefreshTrust) == 0 {
		c.RefreshTrust = []string{upstream.DefaultRefreshTrust}
	}
	if c.CalmWaitMax == 0 {
		c.CalmWaitMax = DefaultCalmWaitMax
	}
	if c.ReplicaAuthUser == "" && c.ReplicaAuthPassword == "" {
		c.ReplicaAuthUser, c.ReplicaAuthPassword = c.UpstreamUser, c.UpstreamPassword
	}
	if c.MaxClients == 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.HoldAhead == 0 {
		c.HoldAhead = DefaultHoldAhead
	}
	if c.RDBRefusalTTL == 0 {
		c.RDBRefusalTTL = DefaultRDBRefusalTTL
	}
	if c.GuardMinKeysRatio == 0 {
		c.GuardMinKeysRatio = upstream.DefaultGuardMinKeysRatio
	}
	if c.TailBuffer == 0 {
		c.TailBuffer = DefaultTailBuffer
	}
	if c.IntakeBuffer == 0 {
		c.IntakeBuffer = DefaultIntakeBuffer
	}
	if c.TLSAuthClients == "" {
		c.TLSAuthClients = "yes"
	}
	if c.ReloadInterval == 0 {
		c.ReloadInterval = DefaultReloadInterval
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
}

// Validate checks a configuration after defaults are applied to a copy.
func (c Config) Validate() error {
	c.setDefaults()
	return c.validate()
}

func (c *Config) validate() error {
	var errs []error
	if c.Upstream == "" {
		errs = append(errs, errors.New("upstream is required (--upstream HOST:PORT)"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir is required (--data-dir DIR)"))
	}
	if c.TLSListen != "" && (c.TLSCertFile == "" || c.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-listen needs --tls-cert-file and --tls-key-file"))
	}
	if c.TLSListen == "" && (c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSAuthUserFromCN) {
		errs = append(errs, errors.New("--tls-cert-file, --tls-key-file and --tls-auth-user-from-cn need --tls-listen"))
	}
	if _, err := tlsconf.ParseClientAuth(c.TLSAuthClients); err != nil {
		errs = append(errs, err)
	} else if c.TLSListen != "" && c.TLSAuthClients != "no" && c.TLSCAFile == "" {
		errs = append(errs, fmt.Errorf("--tls-auth-clients %s needs --tls-ca-cert-file to verify client certificates (or --tls-auth-clients no)", c.TLSAuthClients))
	}
	if !c.UpstreamTLS && (c.UpstreamTLSCertFile != "" || c.UpstreamTLSKeyFile != "" || c.UpstreamTLSCAFile != "" || c.UpstreamTLSServerName != "" || c.UpstreamTLSInsecure) {
		errs = append(errs, errors.New("--upstream-tls-* options need --upstream-tls"))
	}
	if (c.UpstreamTLSCertFile == "") != (c.UpstreamTLSKeyFile == "") {
		errs = append(errs, errors.New("--upstream-tls-cert-file and --upstream-tls-key-file go together"))
	}
	if (c.MetricsTLSCertFile == "") != (c.MetricsTLSKeyFile == "") {
		errs = append(errs, errors.New("--metrics-tls-cert-file and --metrics-tls-key-file go together"))
	}
	if c.TLSAuthUserFromCN && c.TLSAuthClients == "no" {
		errs = append(errs, errors.New("--tls-auth-user-from-cn needs client certificates (--tls-auth-clients yes or optional)"))
	}
	if c.GuardMinKeysRatio < 0 || c.GuardMinKeysRatio > 1 {
		errs = append(errs, fmt.Errorf("guard-min-keys-ratio %v: must be in (0, 1]", c.GuardMinKeysRatio))
	}
	if c.ReloadInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("reload interval %v: must be at least 100ms", c.ReloadInterval))
	}
	if c.BacklogSize < 1<<20 {
		errs = append(errs, fmt.Errorf("backlog size %d is below the 1mb minimum", c.BacklogSize))
	}
	if c.RefreshRatio <= 0 || c.RefreshRatio > 1 {
		errs = append(errs, fmt.Errorf("refresh ratio %v must be in (0, 1]", c.RefreshRatio))
	}
	if c.FullSyncRetryMin < 100*time.Millisecond || c.FullSyncRetryMax < c.FullSyncRetryMin {
		errs = append(errs, fmt.Errorf("full-sync retry backoff %v..%v: the minimum must be at least 100ms and the maximum not below it",
			c.FullSyncRetryMin, c.FullSyncRetryMax))
	}
	if c.RefreshMode != upstream.RefreshEager && c.RefreshMode != upstream.RefreshLazy {
		errs = append(errs, fmt.Errorf("snapshot-refresh %q: want eager or lazy", c.RefreshMode))
	}
	if c.RefreshUpstream != upstream.RefreshUpstreamOnDemand && c.RefreshUpstream != upstream.RefreshUpstreamEager {
		errs = append(errs, fmt.Errorf("snapshot-refresh-upstream %q: want on-demand or eager", c.RefreshUpstream))
	}
	if _, err := upstream.ParseTrust(c.RefreshTrust); err != nil {
		errs = append(errs, err)
	}
	seen := map[string]bool{}
	for _, src := range c.RefreshFrom {
		if src != upstream.SourceReplicas && src != upstream.SourceUpstream || seen[src] {
			errs = append(errs, fmt.Errorf("snapshot-refresh-from %q: want replicas and/or upstream, each once, in the order to try",
				strings.Join(c.RefreshFrom, ",")))
			break
		}
		seen[src] = true
	}
	if c.MaxClients < 0 {
		errs = append(errs, errors.New("max clients must be >= 0 (0 picks the default)"))
	}
	if (c.DelayedListen == "") != (c.Delay == 0) {
		errs = append(errs, errors.New("--delayed-listen and --delay go together"))
	} else if c.Delay != 0 && c.Delay < time.Second {
		errs = append(errs, fmt.Errorf("delay %v: must be at least 1s", c.Delay))
	}
	if c.AckReplicas < 0 {
		errs = append(errs, errors.New("ack policy replicas:N needs N >= 1"))
	}
	if c.FullSyncRateLimit < 0 {
		errs = append(errs, errors.New("full-sync rate limit must be >= 0 (0: none)"))
	}
	if c.MaxParallelFullSyncs < 0 {
		errs = append(errs, errors.New("max parallel full syncs must be >= 0"))
	}
	if c.AnnounceVersion != "" && !announceVersionRE.MatchString(c.AnnounceVersion) {
		errs = append(errs, fmt.Errorf("announce-version %q: want a release number X.Y.Z", c.AnnounceVersion))
	}
	if c.RDBOnlyMaxAge < 0 {
		errs = append(errs, fmt.Errorf("rdb-only max age %v: must be >= 0 (0: serve the stored snapshot whatever its age)", c.RDBOnlyMaxAge))
	}
	if c.HoldAhead < 0 {
		errs = append(errs, fmt.Errorf("hold-ahead %v: must be >= 0 (0 picks the default %v)", c.HoldAhead, DefaultHoldAhead))
	}
	if c.ReplTimeout < time.Second || c.ReplicaTimeout < time.Second {
		errs = append(errs, errors.New("timeouts must be at least 1s"))
	}
	return errors.Join(errs...)
}

var announceVersionRE = regexp.MustCompile(`^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$`)

// securityOptions is what the security component reads; usersChanged
// closes the sessions of a user a reload removed or disabled.
func (c Config) securityOptions(usersChanged func()) security.Options {
	return security.Options{TLSListen: c.TLSListen, TLSAuthClients: c.TLSAuthClients, TLSCertFile: c.TLSCertFile, TLSKeyFile: c.TLSKeyFile,
		TLSCAFile: c.TLSCAFile, UpstreamTLS: c.UpstreamTLS, UpstreamTLSCertFile: c.UpstreamTLSCertFile,
		UpstreamTLSKeyFile: c.UpstreamTLSKeyFile, UpstreamTLSCAFile: c.UpstreamTLSCAFile,
		UpstreamTLSServerName: c.UpstreamTLSServerName, UpstreamTLSInsecure: c.UpstreamTLSInsecure,
		MetricsTLSCertFile: c.MetricsTLSCertFile, MetricsTLSKeyFile: c.MetricsTLSKeyFile, UsersFile: c.UsersFile,
		RequirePass: c.RequirePass, TLSAuthUserFromCN: c.TLSAuthUserFromCN, ReloadInterval: c.ReloadInterval,
		UsersChanged: usersChanged}
}

// CheckFiles loads the certificate and users files as the daemon would
// at start, for check-config.
func CheckFiles(cfg Config) error {
	cfg.setDefaults()
	_, err := security.New(cfg.securityOptions(nil), slog.New(slog.DiscardHandler), vocab.NewCounts(security.AuthFailureReasons()))
	return err
}

// upOptions is what the upstream side reads; deliver feeds the fan-out
// (nil without one).
func (c Config) upOptions(deliver func(start int64, chunk []byte, busy bool)) upstream.Options {
	return upstream.Options{Upstream: c.Upstream, UpstreamUser: c.UpstreamUser, UpstreamPassword: c.UpstreamPassword,
		UpstreamTLS: c.UpstreamTLS, UpstreamTLSInsecure: c.UpstreamTLSInsecure, AnnounceIP: c.AnnounceIP,
		AnnounceVersion: c.AnnounceVersion, AnnouncePort: c.AnnouncePort, ReplicaAuthUser: c.ReplicaAuthUser,
		ReplicaAuthPassword: c.ReplicaAuthPassword, ReplTimeout: c.ReplTimeout, ReplicaTimeout: c.ReplicaTimeout,
		DataDir: c.DataDir, BacklogSize: c.BacklogSize, SegmentSize: c.SegmentSize, Fsync: c.Fsync, Delay: c.Delay,
		AckReplicas: c.AckReplicas, CalmWaitMax: c.CalmWaitMax, FullSyncRetryMin: c.FullSyncRetryMin,
		FullSyncRetryMax: c.FullSyncRetryMax, GuardDisabled: c.GuardDisabled, GuardMinKeysRatio: c.GuardMinKeysRatio,
		RefreshFrom: c.RefreshFrom, RefreshTrust: c.RefreshTrust, RefreshMode: c.RefreshMode,
		RefreshUpstream: c.RefreshUpstream, RefreshRatio: c.RefreshRatio, Observer: c.Observer, SyncFile: c.syncFile,
		Deliver: deliver}
}

// Probe checks, before deploying, what the daemon will need: the upstream
// reachable, its replica handshake accepted with the configured
// credentials up to (not including) PSYNC, and the data dir writable with
// the free space the backlog budget needs. It asks the origin for nothing
// that costs it anything.
func Probe(ctx context.Context, cfg Config) []upstream.ProbeResult {
	cfg.setDefaults()
	o := cfg.upOptions(nil)
	for _, l := range []string{cfg.Listen, cfg.TLSListen} {
		if _, port, err := net.SplitHostPort(l); o.AnnouncePort == 0 && err == nil {
			o.AnnouncePort, _ = strconv.Atoi(port)
		}
	}
	sec, err := security.New(cfg.securityOptions(nil), slog.New(slog.DiscardHandler), vocab.NewCounts(security.AuthFailureReasons()))
	return upstream.Probe(ctx, o, sec, err)
}

// downOptions is what the replica side reads.
func (c Config) downOptions() downstream.Options {
	return downstream.Options{ReplicaTimeout: c.ReplicaTimeout, HoldAhead: c.HoldAhead, MaxParallelFullSyncs: c.MaxParallelFullSyncs,
		FullSyncRateLimit: c.FullSyncRateLimit, RDBRefusalTTL: c.RDBRefusalTTL, RDBOnlyMaxAge: c.RDBOnlyMaxAge, Observer: c.Observer}
}

// cmdOptions is what the command surface reads.
func (c Config) cmdOptions() command.Options {
	return command.Options{MaxClients: c.MaxClients, AnnounceIP: c.AnnounceIP, AnnouncePort: c.AnnouncePort, ConfigFile: c.ConfigFile,
		BacklogSize: c.BacklogSize, ReplTimeout: c.ReplTimeout, DataDir: c.DataDir, RefreshTrust: c.RefreshTrust,
		RefreshUpstream: c.RefreshUpstream, TLSAuthClients: c.TLSAuthClients, Upstream: c.Upstream, UpstreamTLS: c.UpstreamTLS,
		Fanout: !c.DisableFanout}
}
