// Package chaos runs replproxy under randomized combined faults and checks,
// at every quiescent point, that nothing diverged, nothing was lost and
// every full sync had a cause: origin (with a standby it can fail over to)
// → replproxy A → replproxy B, two stock replicas on each, a mixed write
// load, and a seeded schedule of faults.
package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/lazyfs"
	"github.com/replproxy/replproxy/internal/loadgen"
	"github.com/replproxy/replproxy/internal/redistest"
)

// Config is one chaos run.
type Config struct {
	Seed     uint64
	Duration time.Duration // faults stop after this; a last check follows
	Dir      string        // work dir (mounts, data dirs, logs)
	ProxyBin string
	Log      io.Writer
	// CheckEvery is how many faults come between two checks (default 6).
	CheckEvery int
}

// proxyNode is one replproxy process with its links and its data dir.
type proxyNode struct {
	name    string
	bin     string
	args    []string
	addr    string            // its listen address (the tier below dials it directly)
	front   *faultproxy.Proxy // what its replicas dial: proxy↔replica partitions
	up      *faultproxy.Proxy // its upstream link: origin↔A, A↔B
	fs      *lazyfs.FS        // its data dir's file system: power cuts, disk full
	logPath string
	proc    *redistest.Process
	stopped bool  // SIGSTOPped
	checked int64 // the stream it serves was compared with the origin's up to here
}

func (p *proxyNode) start() error {
	proc, err := redistest.StartProcess(p.bin, p.logPath, p.args...)
	if err != nil {
		return err
	}
	p.proc, p.stopped = proc, false
	return waitFor(20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (p *proxyNode) running() bool { return p.proc != nil && !p.proc.Exited() }

// signal sends sig to a running proxy and returns at once.
func (p *proxyNode) signal(sig syscall.Signal) {
	if p.running() {
		_ = p.proc.Notify(sig)
	}
}

// kill SIGKILLs (a stopped process too) and waits.
func (p *proxyNode) kill() {
	if p.proc != nil {
		p.proc.Kill()
	}
}

// world is the topology and what the run has seen.
type world struct {
	cfg      Config
	rnd      *rand.Rand
	roleMu   sync.Mutex        // origin and standby: the load reads them
	origin   *redistest.Server // roles swap at a failover
	standby  *redistest.Server
	proxies  []*proxyNode // A, B
	replicas []*replicaNode
	load     *loadRunner
	ledger   *ledger
	start    time.Time
	compared int64 // stream bytes the checks compared, over both proxies
}

type replicaNode struct {
	name string
	srv  *redistest.Server
	on   *proxyNode // the proxy it replicates from
}

func (w *world) logf(format string, args ...any) {
	fmt.Fprintf(w.cfg.Log, "%7.1fs  %s\n", time.Since(w.start).Seconds(), fmt.Sprintf(format, args...))
}

// build starts every process and waits until every replica has the
// origin's data.
func build(cfg Config) (*world, error) {
	w := &world{cfg: cfg, rnd: rand.New(rand.NewPCG(cfg.Seed, 0x636861)), start: time.Now()}
	w.ledger = newLedger()
	var err error
	// A large origin backlog: every fault here can be bridged by a partial
	// resync, so every full sync needs a cause the ledger knows.
	originArgs := []string{"--repl-backlog-size", "256mb"}
	if w.origin, err = redistest.Start(filepath.Join(cfg.Dir, "origin"), originArgs...); err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(w.origin.Addr())
	if w.standby, err = redistest.Start(filepath.Join(cfg.Dir, "standby"), append(originArgs, "--replicaof", host, port)...); err != nil {
		return nil, err
	}
	for i, name := range []string{"A", "B"} {
		p := &proxyNode{name: name, bin: cfg.ProxyBin, logPath: filepath.Join(cfg.Dir, "proxy"+name+".log")}
		target := w.origin.Addr()
		if i == 1 {
			target = w.proxies[0].addr
		}
		if p.up, err = faultproxy.New(target); err != nil {
			return nil, err
		}
		if p.fs, err = lazyfs.Mount(filepath.Join(cfg.Dir, "disk"+name), filepath.Join(cfg.Dir, "mnt"+name)); err != nil {
			return nil, err
		}
		lport, err := redistest.FreePort()
		if err != nil {
			return nil, err
		}
		p.addr = "127.0.0.1:" + strconv.Itoa(lport)
		if p.front, err = faultproxy.New(p.addr); err != nil {
			return nil, err
		}
		fsync := "always"
		if i == 1 {
			fsync = "everysec"
		}
		p.args = []string{"--upstream", p.up.Addr(), "--listen", p.addr, "--data-dir", filepath.Join(p.fs.Mountpoint, "data"),
			"--fsync", fsync, "--backlog-size", "256mb", "--log-format", "text", "--metrics-listen", "",
			"--repl-timeout", "10s", "--replica-timeout", "10s"}
		if err := p.start(); err != nil {
			return nil, fmt.Errorf("proxy %s: %w", name, err)
		}
		w.proxies = append(w.proxies, p)
	}
	for i := range 4 {
		on := w.proxies[i/2]
		h, pt, _ := net.SplitHostPort(on.front.Addr())
		srv, err := redistest.Start(filepath.Join(cfg.Dir, "replica"+strconv.Itoa(i)), "--replicaof", h, pt)
		if err != nil {
			return nil, err
		}
		w.replicas = append(w.replicas, &replicaNode{name: "replica" + strconv.Itoa(i), srv: srv, on: on})
	}
	w.load = newLoadRunner(w, cfg.Seed)
	return w, nil
}

func (w *world) close() {
	if w.load != nil {
		w.load.stop()
	}
	for _, r := range w.replicas {
		r.srv.Kill()
	}
	for _, p := range w.proxies {
		p.kill()
		p.front.Close()
		p.up.Close()
		if err := p.fs.Unmount(); err != nil {
			w.logf("unmount %s: %v", p.name, err)
		}
	}
	for _, s := range []*redistest.Server{w.origin, w.standby} {
		if s != nil {
			s.Kill()
		}
	}
}

// loadRunner writes a mixed load to whichever server is the origin.
type loadRunner struct {
	w      *world
	seed   uint64
	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newLoadRunner(w *world, seed uint64) *loadRunner { return &loadRunner{w: w, seed: seed} }

// run starts the load if it is not running.
func (l *loadRunner) run() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.wg.Go(func() {
		for round := uint64(0); ctx.Err() == nil; round++ {
			origin := l.w.currentOrigin()
			// 200 rounds a second of 13 commands, a 300 KB value now and then.
			_ = loadgen.Mixed(ctx, origin.Client(), 200, l.seed+round, nil)
			select { // the origin is restarting or moving: try again shortly
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// stop stops the load and waits for its writer.
func (l *loadRunner) stop() {
	l.mu.Lock()
	cancel := l.cancel
	l.cancel = nil
	l.mu.Unlock()
	if cancel != nil {
		cancel()
		l.wg.Wait()
	}
}

func (w *world) currentOrigin() *redistest.Server {
	w.roleMu.Lock()
	defer w.roleMu.Unlock()
	return w.origin
}

func (w *world) swapRoles() {
	w.roleMu.Lock()
	defer w.roleMu.Unlock()
	w.origin, w.standby = w.standby, w.origin
}

func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not reached within %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func infoInt(m map[string]string, key string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(m[key]), 10, 64)
	if err != nil {
		return -1
	}
	return n
}
