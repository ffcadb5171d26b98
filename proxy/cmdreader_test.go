package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/psync"
)

func TestCmdReader(t *testing.T) {
	in := "PING\r\n\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nSYNC\r\nset a c\r\n"
	rd := newCmdReader(bufio.NewReader(strings.NewReader(in)))
	want := []string{"PING", "", "ECHO hi", "SYNC", "set|a|c"}
	for _, w := range want {
		args, err := rd.next()
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, a := range args {
			parts = append(parts, string(a))
		}
		got := strings.Join(parts, " ")
		if strings.Contains(w, "|") {
			got = strings.Join(parts, "|")
		}
		if got != w {
			t.Fatalf("got %q want %q", got, w)
		}
	}
}

func TestCmdReaderLimits(t *testing.T) {
	for _, in := range []string{
		"*1025\r\n", "*1\r\n$65537\r\n", strings.Repeat("x", maxInlineLen+10) + "\r\n",
		"*1\r\n$3\r\nabcde", "*1\r\n+ok\r\n", "*1\n\n",
		"set \"a b\"c\r\n", "PING \"abc\r\n", "PING 'abc\r\n", "*x\r\n", "*" + strings.Repeat("1", 40) + "\r\n",
	} {
		_, err := newCmdReader(bufio.NewReader(strings.NewReader(in))).next()
		var pe *protocolError
		if !errors.As(err, &pe) {
			t.Errorf("%.30q: %v, want a protocol error", in, err)
		}
	}
}

// TestInlineQuotes: inline commands split as Redis' sdssplitargs does.
func TestInlineQuotes(t *testing.T) {
	for in, want := range map[string][]string{
		"set \"a b\" c\r\n":          {"set", "a b", "c"},
		"  a \t b  \r\n":             {"a", "b"},
		`echo "x\x41\n\"y"` + "\r\n": {"echo", "xA\n\"y"},
		`echo 'it\'s' '\n'` + "\n":   {"echo", "it's", `\n`},
		`echo ""` + "\n":             {"echo", ""},
		`echo "\xZZ"` + "\n":         {"echo", "xZZ"},
	} {
		args, err := newCmdReader(bufio.NewReader(strings.NewReader(in))).next()
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		var got []string
		for _, a := range args {
			got = append(got, string(a))
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// FuzzCmdReader: any input gives commands, a clean protocol error or EOF,
// never a panic, and never an argument past the limits.
func FuzzCmdReader(f *testing.F) {
	f.Add([]byte("*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$3\r\n100\r\n\n"))
	f.Add([]byte("PSYNC ? -1\r\nSYNC\r\n"))
	f.Add([]byte("*1\r\n$-1\r\n"))
	f.Add([]byte("\"unbalanced\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := newCmdReader(bufio.NewReaderSize(bytes.NewReader(b), 16))
		for range 100 {
			args, err := rd.next()
			if err != nil {
				return
			}
			if len(args) > maxArgs {
				t.Fatalf("%d args", len(args))
			}
			for _, a := range args {
				if len(a) > maxInlineLen {
					t.Fatalf("argument of %d bytes", len(a))
				}
			}
		}
	})
}

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
