// Package redistest starts and stops real redis-server processes on free
// loopback ports, each in its own directory, for tests and benchmarks.
package redistest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/loopback"
)

// Binary is the redis-server to run; REDIS_SERVER overrides it.
func Binary() string {
	if b := os.Getenv("REDIS_SERVER"); b != "" {
		return b
	}
	return "redis-server"
}

// Available reports whether redis-server can be run, and why not.
func Available() error {
	if _, err := exec.LookPath(Binary()); err != nil {
		return fmt.Errorf("%s not found: install it (Debian: apt-get install -y redis-server) or set REDIS_SERVER", Binary())
	}
	return nil
}

// Server is one running redis-server.
type Server struct {
	Port int
	Dir  string
	Log  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
	cli  *redis.Client
	tls  *TLS
}

// TLS runs a server on a TLS port only (--port 0), with these files.
type TLS struct {
	CertFile, KeyFile, CAFile string
	// AuthClients is tls-auth-clients (default yes).
	AuthClients string
	// Client is the harness client's configuration (its certificate and
	// roots); required.
	Client *tls.Config
}

// Addr is HOST:PORT.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// PID of the process.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// FreePort returns a loopback port that was free a moment ago.
// It is below the ephemeral range (see package loopback).
func FreePort() (int, error) { return loopback.FreePort() }

// Start runs redis-server in dir (created if needed) with test-friendly
// defaults — no persistence, debug commands on, no diskless delay — and any
// extra "--name value" arguments, which win. It waits until PING answers.
func Start(dir string, extra ...string) (*Server, error) { return StartTLS(dir, nil, extra...) }

// StartTLS is Start on a TLS port only, with tls-replication yes (its own
// replication links use TLS too); tl nil is Start.
func StartTLS(dir string, tl *TLS, extra ...string) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 5 {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Port: port, Dir: abs, Log: filepath.Join(abs, "redis.log"), tls: tl}
		ports := []string{"--port", strconv.Itoa(port)}
		if tl != nil {
			auth := tl.AuthClients
			if auth == "" {
				auth = "yes"
			}
			ports = []string{"--port", "0", "--tls-port", strconv.Itoa(port), "--tls-cert-file", tl.CertFile,
				"--tls-key-file", tl.KeyFile, "--tls-ca-cert-file", tl.CAFile, "--tls-auth-clients", auth, "--tls-replication", "yes"}
		}
		s.args = append(append(ports, "--bind", "127.0.0.1", "--dir", abs,
			"--logfile", s.Log, "--save", "", "--appendonly", "no",
			"--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0",
			"--daemonize", "no", "--protected-mode", "no",
		), extra...)
		if err := s.start(); err == nil {
			return s, nil
		} else {
			lastErr = err
		}
	}
	return nil, lastErr
}

func (s *Server) start() error {
	s.cmd = exec.Command(Binary(), s.args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	opts := &redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second}
	if s.tls != nil {
		opts.TLSConfig = s.tls.Client.Clone()
	}
	s.cli = redis.NewClient(opts)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.cli.Ping(context.Background()).Err()
		if err == nil || strings.HasPrefix(err.Error(), "LOADING") {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("redis-server exited at start: %s", s.LogTail(20))
		default:
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on %d did not answer: %v", s.Port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart starts the server again on the same port and directory, with
// extra arguments appended.
func (s *Server) Restart(extra ...string) error {
	s.Kill()
	s.args = append(s.args, extra...)
	return s.start()
}

// Client is a go-redis client for the server.
func (s *Server) Client() *redis.Client { return s.cli }

// Kill sends SIGKILL and waits for the process to go.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Stop sends SIGTERM (a clean shutdown) and waits.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

func (s *Server) signal(sig syscall.Signal) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if s.cli != nil {
		s.cli.Close()
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Exited reports whether the process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Pause and Resume send SIGSTOP and SIGCONT.
func (s *Server) Pause() error  { return s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *Server) Resume() error { return s.cmd.Process.Signal(syscall.SIGCONT) }

// Info returns INFO section fields.
func (s *Server) Info(section string) (map[string]string, error) {
	txt, err := s.cli.Info(context.Background(), section).Result()
	if err != nil {
		return nil, err
	}
	return ParseInfo(txt), nil
}

// ParseInfo turns INFO text into a map.
func ParseInfo(txt string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(txt))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}

// InfoInt returns one numeric INFO field, or -1.
func (s *Server) InfoInt(section, field string) int64 {
	m, err := s.Info(section)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(m[field], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// Digest is DEBUG DIGEST.
func (s *Server) Digest() (string, error) {
	return s.cli.Do(context.Background(), "DEBUG", "DIGEST").Text()
}

// LogTail returns the last n lines of the server log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// LogContains reports whether the log mentions s.
func (s *Server) LogContains(sub string) bool {
	b, err := os.ReadFile(s.Log)
	return err == nil && strings.Contains(string(b), sub)
}

// WaitFor polls cond every 20ms until it holds or timeout passes.
func WaitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("condition not met in " + timeout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
