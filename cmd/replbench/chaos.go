package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/chaos"
	"github.com/replproxy/replproxy/internal/redistest"
)

// chaosCmd runs chaos.Run once per seed and writes each report.
func chaosCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "first seed; each further run takes the next")
	runs := fs.Int("runs", 1, "runs, one seed each")
	duration := fs.Duration("duration", 10*time.Minute, "faults injected for this long in each run")
	out := fs.String("out", "out/chaos", "directory for each run's report and schedule")
	bin := fs.String("replproxy", "", "replproxy binary (default: bin/replproxy next to replbench, else built)")
	race := fs.Bool("race", false, "build replproxy with the race detector for these runs (a DATA RACE in its log is a finding)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := redistest.Available(); err != nil {
		fmt.Fprintln(stderr, "replbench chaos:", err)
		return 1
	}
	work, err := os.MkdirTemp("", "replbench-chaos-")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer os.RemoveAll(work)
	c := &common{log: stderr, proxyBin: *bin, work: work}
	if c.proxyBin == "" && !*race {
		if exe, err := os.Executable(); err == nil {
			if p := filepath.Join(filepath.Dir(exe), "replproxy"); fileExists(p) {
				c.proxyBin = p
			}
		}
	}
	if c.proxyBin == "" {
		if c.proxyBin, err = redistest.BuildProxy(work, *race); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	code := 0
	for i := range *runs {
		s := *seed + uint64(i)
		dir := filepath.Join(work, fmt.Sprint(s))
		rep, err := chaos.Run(chaos.Config{Seed: s, Duration: *duration, Dir: dir, ProxyBin: c.proxyBin, Log: stderr})
		if rep != nil {
			text := rep.String() + "\nschedule:\n" + strings.Join(rep.Schedule, "\n") + "\n"
			_ = os.WriteFile(filepath.Join(*out, fmt.Sprintf("seed-%d.txt", s)), []byte(text), 0o644)
			fmt.Fprint(stdout, rep.String())
		}
		if err != nil {
			keepLogs(dir, filepath.Join(*out, fmt.Sprintf("seed-%d-logs", s)))
			fmt.Fprintf(stderr, "replbench chaos: seed %d: %v\n", s, err)
			if !errors.Is(err, chaos.ErrFindings) {
				return 1
			}
			code = 1
		}
	}
	return code
}

// keepLogs copies every log of a failed run (the proxies', the redis
// servers') to dst: the work dir goes when the command ends.
func keepLogs(src, dst string) {
	_ = filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		rel, _ := filepath.Rel(src, path)
		b, err := os.ReadFile(path)
		if err == nil {
			target := filepath.Join(dst, strings.ReplaceAll(rel, string(filepath.Separator), "_"))
			if os.MkdirAll(dst, 0o755) == nil {
				_ = os.WriteFile(target, b, 0o644)
			}
		}
		return nil
	})
}
