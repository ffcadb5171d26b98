package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/loadgen"
	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// demo runs an origin, a replproxy and stock replicas on loopback under a
// mixed write load and shows a live table until interrupted.
func demo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	replicas := fs.Int("replicas", 3, "stock replicas behind the proxy")
	rate := fs.Int("rate", 200, "load rounds per second (13 commands each)")
	duration := fs.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	keep := fs.Bool("keep", false, "keep the working directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := redistest.Available(); err != nil {
		fmt.Fprintln(stderr, "replbench demo:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	work, err := os.MkdirTemp("", "replproxy-demo-")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	fail := func(err error) int { fmt.Fprintln(stderr, "replbench demo:", err); return 1 }

	origin, err := redistest.Start(filepath.Join(work, "origin"))
	if err != nil {
		return fail(err)
	}
	defer origin.Stop()
	if err := loadgen.Fill(ctx, origin.Client(), 20<<20, 200); err != nil {
		return fail(err)
	}

	logFile, err := os.Create(filepath.Join(work, "replproxy.log"))
	if err != nil {
		return fail(err)
	}
	defer logFile.Close()
	p, err := proxy.New(proxy.Config{Upstream: origin.Addr(), DataDir: filepath.Join(work, "proxy"), Listen: "127.0.0.1:0",
		BacklogSize: 256 << 20, Version: "demo"}, slog.New(slog.NewJSONHandler(logFile, nil)))
	if err != nil {
		return fail(err)
	}
	ln, err := loopback.Listen()
	if err != nil {
		return fail(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan error, 1)
	go func() { pdone <- p.Serve(pctx, ln) }()
	defer func() { pcancel(); <-pdone }()
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	var reps []*redistest.Server
	for i := range *replicas {
		r, err := redistest.Start(filepath.Join(work, "replica"+strconv.Itoa(i)), "--replicaof", "127.0.0.1", port)
		if err != nil {
			return fail(err)
		}
		defer r.Stop()
		reps = append(reps, r)
	}
	var sent loadgen.Counter
	loadErr := make(chan error, 1)
	go func() { loadErr <- loadgen.Mixed(ctx, origin.Client(), *rate, 1, &sent) }()

	fmt.Fprintf(stdout, "origin %s -> replproxy 127.0.0.1:%s -> %d replicas; work dir %s; Ctrl-C to stop\n",
		origin.Addr(), port, len(reps), work)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "\nstopping: every process this demo started is being stopped")
			return 0
		case err := <-loadErr:
			if err != nil {
				return fail(fmt.Errorf("load: %w", err))
			}
		case <-tick.C:
			fmt.Fprint(stdout, statusTable(origin, p, reps, sent.Load()))
		}
	}
}

func statusTable(origin *redistest.Server, p *proxy.Proxy, reps []*redistest.Server, sent int64) string {
	var b strings.Builder
	st := p.Status()
	oOff := origin.InfoInt("replication", "master_repl_offset")
	fmt.Fprintf(&b, "\n%s  commands sent %d\n", time.Now().Format("15:04:05"), sent)
	fmt.Fprintf(&b, "origin offset %d | proxy link %s offset %d (lag %d B) | backlog [%d, %d] | snapshot @%d\n",
		oOff, st.LinkState, st.BacklogEnd, oOff-st.BacklogEnd, st.BacklogFirst, st.BacklogEnd, snapOffset(st))
	fmt.Fprintf(&b, "%-22s %-12s %14s %12s %10s\n", "REPLICA", "STATE", "ACK OFFSET", "LAG BYTES", "LAG SEC")
	byPort := map[int]vocab.ReplicaStatus{}
	for _, r := range st.Replicas {
		byPort[r.Port] = r
	}
	for _, r := range reps {
		rs, ok := byPort[r.Port]
		if !ok {
			fmt.Fprintf(&b, "%-22s %-12s\n", r.Addr(), "connecting")
			continue
		}
		fmt.Fprintf(&b, "%-22s %-12s %14d %12d %10.3f\n", r.Addr(), rs.State, rs.AckOff, rs.LagBytes, rs.LagSeconds)
	}
	return b.String()
}

func snapOffset(st vocab.Status) int64 {
	if st.Snapshot == nil {
		return -1
	}
	return st.Snapshot.Offset
}
