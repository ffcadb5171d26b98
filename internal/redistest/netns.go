package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var netnsSeq atomic.Int32

// StartProtectedT runs a redis-server in protected mode (no password) in a
// network namespace of the test's own, bound to an address of a veth pair
// the test creates, so that the host reaches it from a non-loopback address
// and gets Redis' -DENIED reply. It needs root and iproute2; it returns the
// server's address and removes everything at cleanup.
func StartProtectedT(t testing.TB) string {
	t.Helper()
	return StartInNetnsT(t, nil).Addr
}

// NetnsServer is a redis-server in a network namespace of the test's own.
type NetnsServer struct {
	Addr   string // its address, reached from the host over the veth pair
	HostIP string // the host's end of the pair: how the server reaches the host
	ns     string
}

// StartInNetnsT runs a redis-server in protected mode (no password) in a
// network namespace of the test's own, bound to its end of a veth pair and
// to the namespace's loopback (for Cli). extra gives more redis-server
// arguments, knowing the host's address (e.g. --replicaof HOSTIP PORT). It
// skips without root; everything is removed at cleanup.
func StartInNetnsT(t testing.TB, extra func(hostIP string) []string) *NetnsServer {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("a network namespace needs root")
	}
	n := int(netnsSeq.Add(1)) + os.Getpid()%200*4
	ns := fmt.Sprintf("rptest%d", n)
	host, peer := fmt.Sprintf("rpv%da", n), fmt.Sprintf("rpv%db", n)
	sub := fmt.Sprintf("10.251.%d.%d", (n/64)%256, (n%64)*4)
	hostIP, nsIP := ipAdd(sub, 1), ipAdd(sub, 2)
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	sh("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh("link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	sh("link", "set", peer, "netns", ns)
	sh("addr", "add", hostIP+"/30", "dev", host)
	sh("link", "set", host, "up")
	sh("netns", "exec", ns, "ip", "addr", "add", nsIP+"/30", "dev", peer)
	sh("netns", "exec", ns, "ip", "link", "set", peer, "up")
	sh("netns", "exec", ns, "ip", "link", "set", "lo", "up")
	dir := t.TempDir()
	args := []string{"netns", "exec", ns, Binary(), "--bind", nsIP, "127.0.0.1", "--port", "6379", "--protected-mode", "yes",
		"--save", "", "--appendonly", "no", "--enable-debug-command", "yes", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}
	if extra != nil {
		args = append(args, extra(hostIP)...)
	}
	cmd := exec.Command("ip", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := net.JoinHostPort(nsIP, strconv.Itoa(6379))
	if err := WaitFor(10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		t.Fatalf("redis-server in %s at %s: %v", ns, addr, err)
	}
	return &NetnsServer{Addr: addr, HostIP: hostIP, ns: ns}
}

// Cli runs redis-cli against the server from inside its namespace (over
// its loopback, which protected mode lets in) and returns its output.
func (s *NetnsServer) Cli(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", s.ns, "redis-cli", "-p", "6379"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func ipAdd(base string, k int) string {
	ip := net.ParseIP(base).To4()
	ip[3] += byte(k)
	return ip.String()
}
