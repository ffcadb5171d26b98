// Package loopback hands out loopback listeners and ports for tests and
// benchmarks below the kernel's ephemeral range (32768 and up). A port from
// that range can be the source port of some outgoing connection, or be
// reused at once by another test whose stale replica then reconnects to it.
package loopback

import (
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"syscall"
)

const (
	lowPort  = 10000
	highPort = 32768 // exclusive: the ephemeral range starts here
)

// Listen listens on a random free 127.0.0.1 port below the ephemeral range.
func Listen() (net.Listener, error) { return ListenOn("127.0.0.1") }

// ListenOn is Listen on another address (0.0.0.0 for a test of a
// non-loopback bind), with the same choice of port.
func ListenOn(host string) (net.Listener, error) {
	var err error
	for range 200 {
		port := lowPort + rand.IntN(highPort-lowPort)
		var ln net.Listener
		ln, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
	return nil, err
}

// FreePort returns a port that Listen found free a moment ago, for servers
// that bind it themselves.
func FreePort() (int, error) {
	ln, err := Listen()
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
