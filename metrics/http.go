package metrics

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Readiness modes for /readyz.
const (
	ReadySynced  = "synced"  // upstream link up and a snapshot stored (fan-out tier)
	ReadyProcess = "process" // the process answers (native sidecar in the master pod)
)

// HandlerOptions configure the HTTP surface.
type HandlerOptions struct {
	Readiness   string
	EnablePprof bool
}

// Handler serves /metrics, /livez, /healthz, /readyz and the status page.
func Handler(p *proxy.Proxy, reg *prometheus.Registry, opts HandlerOptions) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry: reg, ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4, Timeout: 10 * time.Second,
	}))
	live := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	mux.HandleFunc("/livez", live)
	mux.HandleFunc("/healthz", live)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reason := notReady(p, opts.Readiness); reason != "" {
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// The guard's accept installs a history on every replica: authenticated
	// like the Redis port (HTTP basic auth with an ACL user or the default
	// user's password), and POST only.
	mux.HandleFunc("/guard", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, strings.ReplaceAll(p.GuardText(), "\r\n", "\n"))
	})
	mux.HandleFunc("/guard/accept", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "POST to accept the held history", http.StatusMethodNotAllowed)
			return
		}
		user, pass, _ := r.BasicAuth()
		if user == "" {
			user = "default"
		}
		if !p.Authenticate(user, pass, r.RemoteAddr) {
			w.Header().Set("WWW-Authenticate", `Basic realm="replproxy"`)
			http.Error(w, "WRONGPASS invalid username-password pair or user is disabled.", http.StatusUnauthorized)
			return
		}
		switch err := p.GuardAccept(); {
		case errors.Is(err, vocab.ErrNothingHeld):
			http.Error(w, "the guard holds no history: nothing to accept", http.StatusConflict)
		case err != nil:
			http.Error(w, "guard accept failed: "+err.Error(), http.StatusInternalServerError)
		default:
			fmt.Fprintln(w, "accepted: replicas full-sync to the held history")
		}
	})
	if opts.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := statusPage.Execute(w, pageData(p)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	return mux
}

func notReady(p *proxy.Proxy, mode string) string {
	if mode == ReadyProcess {
		return ""
	}
	st := p.Status()
	switch {
	case !st.LinkUp && st.FullSync.Blocked != "":
		return "upstream link " + string(st.LinkState) + "; full sync held back: " + st.FullSync.Blocked
	case !st.LinkUp && st.LinkDownReason != "":
		return "upstream link " + string(st.LinkState) + " (" + string(st.LinkDownReason) + ": " + st.LinkDownError + ")"
	case !st.LinkUp:
		return "upstream link " + string(st.LinkState)
	case st.Snapshot == nil:
		return "no snapshot yet"
	}
	return ""
}

// Serve runs the HTTP server on addr until ctx ends.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
			err = e
		}
		return err
	}
}

type replicaRow struct {
	Name, State        string
	AckOffset, LagB    int64
	LagS               string
	LastAck, Connected string
}

type page struct {
	Upstream, Link, ReplID, ReplID2 string
	Offset, First, Second           int64
	Window, Snapshot, FullSync      string
	Replicas                        []replicaRow
	Now                             string
}

func pageData(p *proxy.Proxy) page {
	st := p.Status()
	now := time.Now()
	pg := page{
		Upstream: fmt.Sprintf("%s:%d", st.UpstreamHost, st.UpstreamPort), Link: linkText(st),
		ReplID: st.History.ReplID, ReplID2: st.History.ReplID2, Offset: st.BacklogEnd, First: st.BacklogFirst,
		Second: st.History.SecondOffset, Snapshot: "none", Window: "unknown", Now: now.UTC().Format(time.RFC3339),
	}
	if !st.OldestEntry.IsZero() {
		pg.Window = now.Sub(st.OldestEntry).Truncate(time.Second).String()
	}
	if s := st.Snapshot; s != nil {
		pg.Snapshot = fmt.Sprintf("offset %d, %d bytes, RDB %s %d, taken %s ago", s.Offset, s.Size, s.Magic, s.RDBVersion,
			now.Sub(s.Created).Truncate(time.Second))
	}
	pg.FullSync = "no failure"
	if fs := st.FullSync; fs.LastClass != "" {
		pg.FullSync = fmt.Sprintf("%d failed in a row (%s: %s)", fs.InARow, fs.LastClass, fs.LastError)
		if !fs.NextAt.IsZero() {
			pg.FullSync += fmt.Sprintf("; next attempt in %s", fs.NextAt.Sub(now).Truncate(time.Second))
		}
	}
	if b := st.FullSync.Blocked; b != "" {
		pg.FullSync += "; held back: " + b
	}
	for _, r := range st.Replicas {
		row := replicaRow{Name: fmt.Sprintf("%s:%d", r.IP, r.Port), State: string(r.State), AckOffset: r.AckOff,
			LagB: r.LagBytes, LagS: fmt.Sprintf("%.3f", r.LagSeconds), Connected: r.Addr}
		if !r.AckTime.IsZero() {
			row.LastAck = now.Sub(r.AckTime).Truncate(time.Millisecond).String() + " ago"
		}
		pg.Replicas = append(pg.Replicas, row)
	}
	return pg
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>replproxy</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}</style>
</head><body>
<h1>replproxy</h1>
<p><a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a> · <a href="/livez">/livez</a> · {{.Now}}</p>
<table>
<tr><th>upstream</th><td>{{.Upstream}} ({{.Link}})</td></tr>
<tr><th>replid</th><td>{{.ReplID}}</td></tr>
<tr><th>replid2</th><td>{{.ReplID2}} up to {{.Second}}</td></tr>
<tr><th>backlog</th><td>[{{.First}}, {{.Offset}}], PSYNC window {{.Window}}</td></tr>
<tr><th>snapshot</th><td>{{.Snapshot}}</td></tr>
<tr><th>origin full syncs</th><td>{{.FullSync}}</td></tr>
</table>
<h2>Replicas</h2>
<table id="replicas">
<tr><th>replica</th><th>state</th><th>ack offset</th><th>lag bytes</th><th>lag seconds</th><th>last ACK</th><th>connection</th></tr>
{{range .Replicas}}<tr class="replica"><td>{{.Name}}</td><td>{{.State}}</td><td>{{.AckOffset}}</td><td>{{.LagB}}</td><td>{{.LagS}}</td><td>{{.LastAck}}</td><td>{{.Connected}}</td></tr>
{{else}}<tr><td colspan="7">no replicas connected</td></tr>{{end}}
</table>
</body></html>
`))

// linkText is the link state, with why it is down when it is.
func linkText(st vocab.Status) string {
	if st.LinkUp || st.LinkDownReason == "" {
		return string(st.LinkState)
	}
	return fmt.Sprintf("%s; last: %s: %s", st.LinkState, st.LinkDownReason, st.LinkDownError)
}
