package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartT starts a server for a test and stops it at cleanup; on failure the
// log tail is printed. It skips nothing: a missing redis-server fails.
func StartT(t testing.TB, name string, extra ...string) *Server {
	t.Helper()
	return StartTLST(t, name, nil, extra...)
}

// StartTLST is StartT on a TLS port only (StartTLS).
func StartTLST(t testing.TB, name string, tl *TLS, extra ...string) *Server {
	t.Helper()
	s, err := StartTLS(filepath.Join(t.TempDir(), name), tl, extra...)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("--- %s (port %d) log tail ---\n%s", name, s.Port, s.LogTail(40))
		}
	})
	return s
}

// Eventually fails the test if cond does not hold within timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := WaitFor(timeout, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error

	releaseOnce sync.Once
	releasePath string
	releaseErr  error
)

// ReleaseProxyBinary builds cmd/replproxy once per test binary without the
// race detector, whose shadow memory would swamp a measurement of RSS.
func ReleaseProxyBinary(t testing.TB) string {
	t.Helper()
	releaseOnce.Do(func() {
		dir, err := os.MkdirTemp("", "replproxy-bin-")
		if err != nil {
			releaseErr = err
			return
		}
		releasePath, releaseErr = BuildProxy(dir, false)
	})
	if releaseErr != nil {
		t.Fatal(releaseErr)
	}
	return releasePath
}

// ProxyBinary builds cmd/replproxy once per test binary (with the race
// detector unless REPLPROXY_TEST_NORACE is set) and returns its path.
func ProxyBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "replproxy-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath, buildErr = BuildProxy(dir, os.Getenv("REPLPROXY_TEST_NORACE") == "")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// BuildProxy builds cmd/replproxy into dir and returns the binary's path.
func BuildProxy(dir string, race bool) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	path := filepath.Join(dir, "replproxy")
	args := []string{"build", "-o", path}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/replproxy")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build replproxy: %v\n%s", err, out)
	}
	return path, nil
}

// Process is a replproxy started as its own process, for SIGKILL tests.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	Log  string
}

// StartProcess runs bin with args, its output appended to logPath; it is
// SIGKILLed if the caller dies. For tests, StartProxyProcess.
func StartProcess(bin, logPath string, args ...string) (*Process, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), Log: logPath}
	go func() { _ = cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

// StartProxyProcess runs the replproxy binary with args; output goes to
// logPath (appended). It is killed at cleanup, and its log tail printed
// if the test failed.
func StartProxyProcess(t testing.TB, bin, logPath string, args ...string) *Process {
	t.Helper()
	p, err := StartProcess(bin, logPath, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			t.Logf("--- replproxy log tail ---\n%s", strings.Join(lines, "\n"))
		}
	})
	return p
}

// Kill sends SIGKILL and waits.
func (p *Process) Kill() { p.Signal(syscall.SIGKILL) }

// Signal sends sig and waits for the process to exit.
func (p *Process) Signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Notify sends sig and returns at once (SIGHUP: a reload, not an exit).
func (p *Process) Notify(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// ExitCode waits for exit and returns the code.
func (p *Process) ExitCode() int {
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// PID of the process.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Sentinel is a redis-server in sentinel mode, for tests.
type Sentinel struct {
	Addr string
	Log  string
}

// StartSentinelT runs a sentinel monitoring master as "mymaster" with
// quorum 1; conf adds lines to its configuration. It is killed at cleanup
// and its log tail printed on failure.
func StartSentinelT(t testing.TB, master string, conf ...string) *Sentinel {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	host, mport, err := net.SplitHostPort(master)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &Sentinel{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Log: filepath.Join(dir, "sentinel.log")}
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor mymaster %s %s 1\n%s\n",
		port, dir, s.Log, host, mport, strings.Join(conf, "\n"))
	file := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary(), file, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(s.Log)
			lines := strings.Split(string(b), "\n")
			t.Logf("--- sentinel log tail ---\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return s
}
