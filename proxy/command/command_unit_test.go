package command

import (
	"net"
	"testing"
)

// TestIsSelf: REPLICAOF to the proxy's own listener is recognised however
// the address is written, and only on the listening port.
func TestIsSelf(t *testing.T) {
	for _, bind := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		ln, err := net.Listen("tcp", bind)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p := &Server{ln: ln, cfg: Options{AnnounceIP: "10.9.8.7"}}
		port := ln.Addr().(*net.TCPAddr).Port
		for _, c := range []struct {
			host string
			port int
			want bool
		}{
			{"127.0.0.1", port, true},
			{"localhost", port, true},
			{"10.9.8.7", port, true}, // the announced address
			{"127.0.0.1", port + 1, false},
			{"192.0.2.1", port, false}, // not an address of this host
			{"redis.example", port, false},
		} {
			if got := p.isSelf(c.host, c.port); got != c.want {
				t.Errorf("bound %s: isSelf(%s, %d) = %v", bind, c.host, c.port, got)
			}
		}
	}
}
