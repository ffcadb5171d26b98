package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redistest"
)

// probeLines runs check-config --probe and returns its exit code and the
// probe's verdict lines.
func probeLines(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"check-config", "--probe", "--metrics-listen", ""}, args...), &out, &errb)
	var lines []string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "probe ") {
			lines = append(lines, l)
		}
	}
	return code, strings.Join(lines, "\n") + errb.String()
}

// TestCheckConfigProbe: the probe passes against a healthy origin and
// fails, naming the check, against a wrong port, a wrong password and a
// read-only data dir; one message per problem.
func TestCheckConfigProbe(t *testing.T) {
	origin := redistest.StartT(t, "origin")
	secured := redistest.StartT(t, "secured")
	if err := secured.Client().ConfigSet(context.Background(), "requirepass", "right").Err(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	code, out := probeLines(t, "--upstream", origin.Addr(), "--data-dir", dir, "--backlog-size", "16mb")
	if code != 0 || strings.Count(out, " ok ") != 3 {
		t.Fatalf("healthy: exit %d\n%s", code, out)
	}
	closed, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		args  []string
		check string
		words string
	}{
		"wrong port":     {[]string{"--upstream", "127.0.0.1:" + strconv.Itoa(closed), "--data-dir", dir}, "upstream:", "connection refused"},
		"wrong password": {[]string{"--upstream", secured.Addr(), "--data-dir", dir, "--upstream-password", "wrong"}, "handshake:", "WRONGPASS"},
		"no password":    {[]string{"--upstream", secured.Addr(), "--data-dir", dir}, "handshake:", "NOAUTH"},
	} {
		code, out := probeLines(t, c.args...)
		if code != 1 || !strings.Contains(out, "probe "+c.check) || !strings.Contains(out, "FAIL") || !strings.Contains(out, c.words) {
			t.Errorf("%s: exit %d\n%s", name, code, out)
		}
	}
	if os.Getuid() != 0 {
		t.Log("protected mode and read-only data dir not checked: they need root")
		return
	}
	code, out = probeLines(t, "--upstream", redistest.StartProtectedT(t), "--data-dir", dir)
	if code != 1 || !strings.Contains(out, "probe handshake: FAIL") || !strings.Contains(out, "DENIED") || !strings.Contains(out, "set a password") {
		t.Fatalf("protected mode: exit %d\n%s", code, out)
	}
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", ro).Run()
	code, out = probeLines(t, "--upstream", origin.Addr(), "--data-dir", ro)
	if code != 1 || !strings.Contains(out, "probe data dir: FAIL") || !strings.Contains(out, "read-only") {
		t.Fatalf("read-only data dir: exit %d\n%s", code, out)
	}
}
