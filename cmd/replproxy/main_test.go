package main

import (
	"bytes"
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

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	_ = os.WriteFile(good, []byte("upstream: 10.0.0.1:6379\ndata-dir: "+dir+"\nrequirepass: topsecret\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"check-config", "--config", good}, &out, &errb); code != 0 {
		t.Fatalf("check-config: %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "10.0.0.1:6379") || strings.Contains(out.String(), "topsecret") {
		t.Fatalf("effective config:\n%s", out.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("upstream: a:1\ndata-dir: "+dir+"\nbogus-key: 1\n"), 0o644)
	errb.Reset()
	if code := run([]string{"check-config", "--config", bad}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "bogus-key") {
		t.Fatalf("bad file: %d %q", code, errb.String())
	}
}
