package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBadInputExitsTwoAndTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "afile")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "not-created")
	cases := map[string][]string{
		"no upstream":       {"--data-dir", missing},
		"no data dir":       {"--upstream", "127.0.0.1:1"},
		"data dir is file":  {"--upstream", "127.0.0.1:1", "--data-dir", file},
		"bad size":          {"--upstream", "127.0.0.1:1", "--data-dir", missing, "--backlog-size", "lots"},
		"tiny backlog":      {"--upstream", "127.0.0.1:1", "--data-dir", missing, "--backlog-size", "10kb"},
		"bad fsync":         {"--upstream", "127.0.0.1:1", "--data-dir", missing, "--fsync", "sometimes"},
		"bad log level":     {"--upstream", "127.0.0.1:1", "--data-dir", missing, "--log-level", "loud"},
		"unknown flag":      {"--bogus"},
		"stray argument":    {"--upstream", "127.0.0.1:1", "--data-dir", missing, "extra"},
		"two password srcs": {"--upstream", "127.0.0.1:1", "--data-dir", missing, "--requirepass", "a", "--requirepass-file", file},
	}
	for name, args := range cases {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%s: exit %d, stderr %q", name, code, errb.String())
		}
		if errb.Len() == 0 {
			t.Errorf("%s: no error message", name)
		}
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("bad input created the data dir: %v", err)
	}
}

func TestEnvTwinsFlagsWin(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	a := fs.String("upstream", "", "")
	b := fs.String("backlog-size", "", "")
	c := fs.String("log-level", "info", "")
	if err := fs.Parse([]string{"--upstream", "flag:1"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"REPLPROXY_UPSTREAM": "env:1", "REPLPROXY_BACKLOG_SIZE": "2gb"}
	if err := applyEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if *a != "flag:1" || *b != "2gb" || *c != "info" {
		t.Fatalf("upstream %q backlog %q level %q", *a, *b, *c)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1gb": 1 << 30, "512mb": 512 << 20, "64kb": 64 << 10, "1000": 1000, "2g": 2e9, "10GB": 10 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x", "-1mb", "1tb", "99999999999gb"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestVersionAndInspectErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "replproxy ") {
		t.Fatalf("--version: %d %q", code, out.String())
	}
	if code := run([]string{"inspect", filepath.Join(t.TempDir(), "none")}, &out, &errb); code != 2 {
		t.Fatalf("inspect of a missing dir: %d", code)
	}
	if code := run([]string{"inspect"}, &out, &errb); code != 2 {
		t.Fatalf("inspect without a dir: %d", code)
	}
}
