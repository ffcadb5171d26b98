package proxy

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/psync"
)

func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Upstream: "127.0.0.1:1", DataDir: dir, Listen: "127.0.0.1:0"}
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.shutdown()
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second proxy on the same data dir: %v", err)
	}
}

// TestHandshakeOfNewerReplicas: what Redis 8 and Valkey 8 replicas send
// first is accepted, unknown capabilities ignored, so they fall back to the
// classic single-connection sync as they do against Redis 7.
func TestHandshakeOfNewerReplicas(t *testing.T) {
	p := startProxy(t, "127.0.0.1:1", t.TempDir()) // no upstream needed
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	for _, c := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"REPLCONF", "capa", "eof", "capa", "psync2", "capa", "dual-channel"}, "+OK"},
		{[]string{"REPLCONF", "capa", "eof", "capa", "psync2", "capa", "rdb-channel-repl"}, "+OK"},
		{[]string{"REPLCONF", "version", "8.0.1"}, "+OK"},
		{[]string{"REPLCONF", "listening-port", "6379", "ip-address", "10.0.0.7"}, "+OK"},
		{[]string{"REPLCONF", "rdb-filter-only", ""}, "+OK"},          // redis-cli --replica: an empty RDB, then the stream
		{[]string{"REPLCONF", "rdb-filter-only", "functions"}, "+OK"}, // redis-cli --functions-rdb
		{[]string{"REPLCONF", "rdb-filter-only", "keys"}, "-ERR Unsupported rdb-filter-only option: keys"},
		{[]string{"REPLCONF", "ACK", "5"}, ""}, // no reply at all
		{[]string{"PING"}, "+PONG"},
	} {
		if _, err := conn.Write(psync.EncodeCommand(c.cmd...)); err != nil {
			t.Fatal(err)
		}
		if c.want == "" {
			continue
		}
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, c.want) {
			t.Fatalf("%v: %q %v, want %s", c.cmd, line, err, c.want)
		}
	}
}
