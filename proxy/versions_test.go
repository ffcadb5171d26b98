package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync"
)

// valkey9Master is a scripted Valkey 9 primary (PROTOCOL.md §8.1): it
// writes RDB 80 (magic VALKEY080) to a replica that announced REPLCONF
// version 9.0 or later, RDB 11 otherwise. It records the versions it was
// told.
func valkey9Master(t *testing.T) (addr string, announced func() []string) {
	t.Helper()
	var mu sync.Mutex
	var versions []string
	addr = fakeMasterSeeing(t, func(conn net.Conn, handshake [][]string) {
		version := ""
		for _, c := range handshake {
			if len(c) == 3 && strings.EqualFold(c[0], "replconf") && strings.EqualFold(c[1], "version") {
				version = c[2]
				mu.Lock()
				versions = append(versions, version)
				mu.Unlock()
			}
		}
		magic := "REDIS0011"
		if version >= "9." { // enough for the versions the tests announce
			magic = "VALKEY080"
		}
		id := strings.Repeat("9", 40)
		rdb := []byte(magic + "\xfa\x0avalkey-ver\x059.0.0\xfe\x00\xfb\x01\x00\x00\x01k\x01v\xff")
		rdb = binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
		fmt.Fprintf(conn, "+FULLRESYNC %s 0\r\n$%d\r\n", id, len(rdb))
		conn.Write(rdb)
		_, _ = io.Copy(io.Discard, conn)
	})
	return addr, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), versions...)
	}
}

// TestAnnounceVersion: by default the proxy announces no version and a
// Valkey 9 origin sends it the portable RDB 11; with --announce-version
// 9.0.0 it sends RDB 80, which the proxy stores as such.
func TestAnnounceVersion(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		announce string
		rdb      int
	}{{"", 11}, {"9.0.0", 80}} {
		addr, announced := valkey9Master(t)
		p := startProxy(t, addr, t.TempDir(), func(cfg *Config) { cfg.AnnounceVersion = c.announce })
		redistest.Eventually(t, 10*time.Second, "link up", p.linkUp)
		if v := p.position().Snap.RDBVersion; v != c.rdb {
			t.Errorf("announcing %q: snapshot RDB %d, want %d", c.announce, v, c.rdb)
		}
		got := announced()
		if c.announce == "" && len(got) != 0 || c.announce != "" && (len(got) == 0 || got[0] != c.announce) {
			t.Errorf("announcing %q: the origin was told %q", c.announce, got)
		}
		p.stop(t)
	}
	if err := (Config{Upstream: "a:1", DataDir: t.TempDir(), AnnounceVersion: "9.x"}).Validate(); err == nil || !strings.Contains(err.Error(), "announce-version") {
		t.Error("--announce-version 9.x accepted")
	}
}

// TestNewerReplicaHandshakes replays, byte for byte, what a Redis 8 replica
// (capa rdb-channel-repl) and a Valkey 8 replica with dual-channel enabled
// (capa dual-channel, REPLCONF version) send (PROTOCOL.md §8.3, §8.4): the
// proxy ignores the capabilities and answers the classic +FULLRESYNC with
// a $<len> payload, then streams, so both fall back to single-connection
// sync as they do against Redis 7.
func TestNewerReplicaHandshakes(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	for _, c := range []struct {
		name string
		cmds [][]string
	}{
		{"redis 8", [][]string{{"PING"}, {"REPLCONF", "listening-port", "6380"},
			{"REPLCONF", "capa", "eof", "capa", "psync2", "capa", "rdb-channel-repl"}}},
		{"valkey 8 dual-channel", [][]string{{"PING"}, {"REPLCONF", "listening-port", "6381"},
			{"REPLCONF", "capa", "eof", "capa", "psync2", "capa", "dual-channel"}, {"REPLCONF", "version", "8.0.2"}}},
	} {
		conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		must(t, err)
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(conn)
		for _, cmd := range c.cmds {
			_, _ = conn.Write(psync.EncodeCommand(cmd...))
			if line, err := br.ReadString('\n'); err != nil || (line != "+OK\r\n" && line != "+PONG\r\n") {
				t.Fatalf("%s: %v: %q %v", c.name, cmd, line, err)
			}
		}
		reply, err := psync.Psync(conn, br, "", -1, nil)
		if err != nil || reply.Kind != psync.ReplyFullResync {
			t.Fatalf("%s: PSYNC ? -1: %+v %v, want +FULLRESYNC", c.name, reply, err)
		}
		head, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(head, "$") || strings.HasPrefix(head, "$EOF:") {
			t.Fatalf("%s: payload header %q %v, want $<len>", c.name, head, err)
		}
		conn.Close()
	}
}
