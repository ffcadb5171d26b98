package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redistest"
)

// TestScenariosTiny runs every scenario at a tiny size against real
// redis-servers so the tool cannot rot, and checks the properties each one
// exists to show.
func TestScenariosTiny(t *testing.T) {
	bin := redistest.ProxyBinary(t)
	out := t.TempDir()
	common := []string{"--out", out, "--replproxy", bin, "--origin-diskless-delay", "0"}
	cases := []struct {
		name  string
		args  []string
		check func(t *testing.T, r report)
	}{
		{"fanout", []string{"--replicas", "2", "--dataset", "2mb"}, func(t *testing.T, r report) {
			if v := rowOf(t, r, "proxy").Values["origin forks"]; v != 1 {
				t.Errorf("proxy topology: origin forked %v times", v)
			}
		}},
		{"relay", []string{"--replicas", "1", "--duration", "2s", "--rate", "5000"}, func(t *testing.T, r report) {
			if v := rowOf(t, r, "proxy").Values["writes/s"]; v < 1000 {
				t.Errorf("proxy topology: %v writes/s", v)
			}
		}},
		{"outage", []string{"--dataset", "2mb", "--outages", "1s", "--write-rate-bytes", "2097152"}, func(t *testing.T, r report) {
			if v := rowOf(t, r, "proxy, 1s").Text["resync"]; v != "partial" {
				t.Errorf("proxy: %s resync after a 1s outage", v)
			}
			if v := rowOf(t, r, "direct, 1s").Text["resync"]; v != "full" {
				t.Errorf("direct with a 1 MB backlog: %s resync after 2 MB missed", v)
			}
		}},
		{"restart", []string{"--replicas", "1", "--dataset", "2mb", "--duration", "1s"}, func(t *testing.T, r report) {
			p := rowOf(t, r, "proxy")
			if p.Values["downstream full syncs"] != 0 || p.Values["upstream full syncs"] != 0 {
				t.Errorf("proxy restart caused full syncs: %v", p.Values)
			}
		}},
		// Two replicas: a restart then always leaves one online to refresh
		// from. With one, a refresh falling due while it restarts goes to
		// the upstream, as designed, and forks the origin.
		{"churn", []string{"--replicas", "2", "--dataset", "2mb", "--duration", "4s", "--churn-every", "1500ms", "--write-rate", "4mb", "--backlog-size", "4mb"}, func(t *testing.T, r report) {
			if v := rowOf(t, r, "proxy").Values["origin forks"]; v != 0 {
				t.Errorf("proxy topology: the churn forked the origin %v times", v)
			}
			if v := rowOf(t, r, "direct").Values["origin forks"]; v < 2 {
				t.Errorf("direct topology: %v origin forks for the churn", v)
			}
		}},
		{"ceiling", []string{"--replicas", "2", "--dataset", "16mb"}, func(t *testing.T, r report) {
			if v := rowOf(t, r, "proxy").Values["aggregate MB/s"]; v <= 0 {
				t.Errorf("proxy ceiling %v MB/s", v)
			}
			if v := rowOf(t, r, "new page-cache pages (machine)").Values["stream MB/s"]; v <= 0 {
				t.Errorf("page-cache write %v MB/s", v)
			}
		}},
		// TLS everywhere: the same scenarios, reported apart.
		{"relay", []string{"--tls", "--replicas", "1", "--duration", "2s", "--rate", "5000"}, func(t *testing.T, r report) {
			if r.Params["tls"] != "yes" || rowOf(t, r, "proxy").Values["writes/s"] < 1000 || rowOf(t, r, "chained").Values["writes/s"] < 1000 {
				t.Errorf("relay over TLS: %+v", r)
			}
		}},
		{"ceiling", []string{"--tls", "--replicas", "2", "--dataset", "16mb"}, func(t *testing.T, r report) {
			if v := rowOf(t, r, "proxy").Values["aggregate MB/s"]; v <= 0 || r.Params["tls"] != "yes" {
				t.Errorf("proxy ceiling over TLS %v MB/s", v)
			}
		}},
	}
	for _, c := range cases {
		file := c.name
		if len(c.args) > 0 && c.args[0] == "--tls" {
			file += "-tls"
		}
		t.Run(file, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(append(append([]string{c.name}, c.args...), common...), &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d\n%s", code, stderr.String())
			}
			var r report
			b, err := os.ReadFile(filepath.Join(out, file+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			for _, rw := range r.Rows {
				if rw.Error != "" {
					t.Errorf("%s: %s", rw.Label, rw.Error)
				}
			}
			svg, _ := os.ReadFile(filepath.Join(out, file+".svg"))
			if !strings.HasPrefix(string(svg), "<svg") || !strings.Contains(stdout.String(), "| topology |") {
				t.Error("missing chart or table")
			}
			c.check(t, r)
		})
	}
}

func rowOf(t *testing.T, r report, label string) row {
	t.Helper()
	for _, rw := range r.Rows {
		if rw.Label == label {
			return rw
		}
	}
	t.Fatalf("no row %q", label)
	return row{}
}
