// Package faultproxy is a TCP forwarder for tests that cuts, stalls or
// resets connections on command, at exact byte counts.
package faultproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/replproxy/replproxy/internal/loopback"
)

// Proxy forwards connections from Addr to a target.
type Proxy struct {
	ln     net.Listener
	target atomic.Value // string

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	cutAfter  atomic.Int64 // cut each connection after this many target->client bytes; 0 = never
	refuse    atomic.Bool
	forwarded atomic.Int64
}

// New listens on a free loopback port and forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := loopback.Listen()
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, conns: map[net.Conn]struct{}{}}
	p.target.Store(target)
	go p.accept()
	return p, nil
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CutAfter makes every new byte stream from the target end after n bytes
// (counted per connection); 0 disables it.
func (p *Proxy) CutAfter(n int64) { p.cutAfter.Store(n) }

// SetTarget points new connections elsewhere (a failover, as a client
// behind a virtual IP sees it).
func (p *Proxy) SetTarget(addr string) { p.target.Store(addr) }

// Refuse closes new connections at once while set.
func (p *Proxy) Refuse(v bool) { p.refuse.Store(v) }

// CutAll closes every open connection.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Forwarded is the number of target->client bytes forwarded by finished
// and running connections (counted as they finish).
func (p *Proxy) Forwarded() int64 { return p.forwarded.Load() }

// Close stops the proxy and its connections.
func (p *Proxy) Close() {
	p.ln.Close()
	p.CutAll()
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.refuse.Load() {
			c.Close()
			continue
		}
		go p.handle(c)
	}
}

func (p *Proxy) handle(client net.Conn) {
	server, err := net.Dial("tcp", p.target.Load().(string))
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	defer func() {
		client.Close()
		server.Close()
		p.track(client, false)
		p.track(server, false)
	}()
	go func() {
		_, _ = io.Copy(server, client)
		server.Close()
	}()
	limit := p.cutAfter.Load()
	var src io.Reader = &countingReader{r: server, n: &p.forwarded}
	if limit > 0 {
		src = io.LimitReader(src, limit)
	}
	_, _ = io.Copy(client, src)
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}
