package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/proxy/vocab"
)

// TestTrustRules: parsing and matching of --snapshot-refresh-trust.
func TestTrustRules(t *testing.T) {
	if _, err := ParseTrust([]string{"user:a", "cn:b"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"a", "user:", "host:x", ""} {
		if _, err := ParseTrust([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	rules, _ := ParseTrust([]string{"user:replica", "cn:edge-1"})
	for _, tc := range []struct {
		id   vocab.Identity
		want bool
	}{
		{vocab.Identity{User: "replica"}, true},
		{vocab.Identity{User: "default"}, false},
		{vocab.Identity{User: "other", CN: "edge-1"}, true},
		{vocab.Identity{}, false},
		{vocab.Identity{CN: "replica"}, false}, // a CN is not a user
	} {
		if got := trusts(rules, tc.id); got != tc.want {
			t.Errorf("trusts(%v) = %v, want %v", tc.id, got, tc.want)
		}
	}
	def, _ := ParseTrust([]string{DefaultRefreshTrust})
	if !trusts(def, vocab.Identity{User: "default"}) || trusts(def, vocab.Identity{User: "replica"}) {
		t.Error("the default trusts other than the default user")
	}
}

// TestSourceCheck: what a refresh source must report of itself, from
// INFO replication as Redis 7.0 writes it (and a fork that says replica).
func TestSourceCheck(t *testing.T) {
	const id = "0123456789012345678901234567890123456789"
	base := map[string]string{"role": "slave", "master_host": "10.0.0.1", "master_port": "6380",
		"master_link_status": "up", "slave_read_only": "1", "master_replid": id}
	check := sourceCheck{replID: id, ports: []int{6380, 6390}}
	for _, tc := range []struct {
		name   string
		change map[string]string
		want   vocab.SourceRefusal // "": accepted
	}{
		{"a read-only replica of this proxy", nil, ""},
		{"on the TLS port", map[string]string{"master_port": "6390"}, ""},
		{"a fork's field names", map[string]string{"role": "replica", "slave_read_only": "", "replica_read_only": "1"}, ""},
		{"writable", map[string]string{"slave_read_only": "0"}, vocab.RefusedWritable},
		{"a master", map[string]string{"role": "master"}, vocab.RefusedNotOurs},
		{"link down", map[string]string{"master_link_status": "down"}, vocab.RefusedNotOurs},
		{"another history", map[string]string{"master_replid": strings.Repeat("f", 40)}, vocab.RefusedNotOurs},
		{"another master's port", map[string]string{"master_port": "6379"}, vocab.RefusedNotOurs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := map[string]string{}
			for k, v := range base {
				fields[k] = v
			}
			for k, v := range tc.change {
				fields[k] = v
			}
			var txt strings.Builder
			txt.WriteString("# Replication\r\n")
			for k, v := range fields {
				if v != "" {
					fmt.Fprintf(&txt, "%s:%s\r\n", k, v)
				}
			}
			reply := fmt.Sprintf("$%d\r\n%s\r\n", txt.Len(), txt.String())
			err := check.verify(io.Discard, bufio.NewReader(strings.NewReader(reply)))
			var refused *errSourceRefused
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (!errors.As(err, &refused) || refused.reason != tc.want):
				t.Fatalf("got %v, want a %s refusal", err, tc.want)
			}
		})
	}
	// An error reply is classified as the handshake's would be.
	err := check.verify(io.Discard, bufio.NewReader(strings.NewReader("-NOAUTH Authentication required.\r\n")))
	var refused *errSourceRefused
	if !errors.As(err, &refused) || refused.reason != vocab.RefusedAuth {
		t.Fatalf("NOAUTH: %v", err)
	}
}

// FuzzSourceCheck: whatever a refresh source answers to INFO replication,
// the check returns without panicking, reads no more than the reply, and
// accepts only a reply that names the proxy's history, a port of it and a
// read-only, linked replica.
func FuzzSourceCheck(f *testing.F) {
	const id = "0123456789012345678901234567890123456789"
	ok := "# Replication\r\nrole:slave\r\nmaster_port:6380\r\nmaster_link_status:up\r\nslave_read_only:1\r\nmaster_replid:" + id + "\r\n"
	f.Add([]byte(fmt.Sprintf("$%d\r\n%s\r\n", len(ok), ok)))
	f.Add([]byte("-DENIED Redis is running in protected mode\r\n"))
	f.Add([]byte("$-1\r\n"))
	f.Add([]byte("$99999999999\r\n"))
	f.Add([]byte("*1\r\n$4\r\nrole\r\n"))
	check := sourceCheck{replID: id, ports: []int{6380}}
	f.Fuzz(func(t *testing.T, reply []byte) {
		err := check.verify(io.Discard, bufio.NewReader(bytes.NewReader(reply)))
		if err != nil {
			return
		}
		txt := string(reply)
		for _, must := range []string{"master_replid:" + id, "master_port:6380", "master_link_status:up"} {
			if !strings.Contains(txt, must) {
				t.Fatalf("accepted a reply without %q: %q", must, reply)
			}
		}
	})
}
