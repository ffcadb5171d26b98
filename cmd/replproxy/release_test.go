package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReleaseBinary builds the binary as the Dockerfile does (static,
// trimmed, version stamped) and runs --version and check-config.
func TestReleaseBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "replproxy")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v9.9.9-test", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("binary is dynamically linked")
		}
	}
	f.Close()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "v9.9.9-test") {
		t.Fatalf("--version: %v %s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "check-config", "--upstream", "redis:6379", "--data-dir", dir)
	cmd.Env = append(os.Environ(), "REPLPROXY_BACKLOG_SIZE=2gb")
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"2147483648"`) || !strings.Contains(string(out), "(env)") {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	cmd = exec.Command(bin, "check-config", "--upstream", "redis:6379")
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Fatalf("check-config without a data dir: %v", err)
	}
}

// TestDockerfile checks what can be checked without a Docker engine.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"golang:${GO_VERSION}", "ARG GO_VERSION=1.26", "CGO_ENABLED=0", "-trimpath", "-X main.version=",
		"distroless/static", "USER 65532:65532", `ENTRYPOINT ["/usr/local/bin/replproxy"]`, "EXPOSE 6380 9380",
		`HEALTHCHECK`, `"healthcheck"`, "org.opencontainers.image."} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
