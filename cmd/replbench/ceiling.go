package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync"
)

// ceiling: how fast replproxy can relay, with nothing else in the way: a
// synthetic upstream streams as fast as it can, synthetic sinks read and
// ACK. Next to it, a plain Go fan-out copy over the same loopback.
func ceiling(c *common, _ *flag.FlagSet) (*report, error) {
	rep := &report{Scenario: "ceiling", Headline: "aggregate MB/s", Lower: false,
		Columns: []string{"aggregate MB/s", "stream MB/s", "seconds", "relay CPU s per GB in", "relay peak RSS MB"},
		Params:  map[string]string{"sinks": strconv.Itoa(c.replicas), "stream": strconv.FormatInt(c.dataset>>20, 10) + "MB"}}
	stream := buildStream(c.dataset)

	rw := row{Label: "plain socket fan-out", Values: map[string]float64{}}
	if secs, err := plainFanout(stream, c.replicas); err != nil {
		rw.Error = err.Error()
	} else {
		rw.rates(len(stream), c.replicas, secs)
	}
	rep.Rows = append(rep.Rows, rw)

	// The file stays (the work dir goes when the run ends), so the proxy
	// below gets none of its pages.
	rw = row{Label: "new page-cache pages (machine)", Values: map[string]float64{}}
	if secs, err := newPageWrite(c.dir("ceiling", "pages"), stream); err != nil {
		rw.Error = err.Error()
	} else {
		rw.rates(len(stream), 0, secs)
	}
	rep.Rows = append(rep.Rows, rw)

	rw = row{Label: "chained replica", Values: map[string]float64{}}
	if err := chainedCeiling(c, stream, &rw); err != nil {
		rw.Error = err.Error()
	}
	rep.Rows = append(rep.Rows, rw)

	rw = row{Label: "proxy", Values: map[string]float64{}}
	if err := proxyCeiling(c, stream, &rw); err != nil {
		rw.Error = err.Error()
	}
	rep.Rows = append(rep.Rows, rw)
	if c.tls != nil {
		rep.Notes = append(rep.Notes, "--tls: every socket (upstream, sinks, the plain fan-out's too) is TLS 1.3 with client certificates.")
	}
	rep.Notes = append(rep.Notes, "new page-cache pages: the stream written once to a new file, in the 256 KB writes the proxy appends, without fsync; the file is kept until the proxy's run ends, so the proxy gets no pages it just freed. Every byte the proxy relays goes into such new pages: where they cost more than the copy (a VM whose host takes freed guest memory back), this row, not the proxy, bounds its stream MB/s.")
	rep.Notes = append(rep.Notes, "chained replica: a stock redis-server replica of the synthetic upstream, with the sinks as its replicas, attached (and past their full sync) before the stream starts; it applies every SET to its dataset (1000 keys overwritten) and relays the stream from memory.")
	rep.Notes = append(rep.Notes, "The stream is SET commands with 16 KB values. replproxy writes every byte to its disk backlog (fsync everysec) and each sink reads it back through its own cursor; the plain copy keeps one buffer in memory. Both run on the same 2 cores as their sinks.")
	return rep, nil
}

func buildStream(size int64) []byte {
	val := strings.Repeat("s", 16<<10)
	var b []byte
	for i := 0; int64(len(b)) < size; i++ {
		b = append(b, psync.EncodeCommand("SET", "k"+strconv.Itoa(i%1000), val)...)
	}
	return b
}

// minimalRDB is an empty RDB 10 with a correct checksum.
func minimalRDB() []byte {
	b := []byte("REDIS0010\xff")
	return binary.LittleEndian.AppendUint64(b, psync.CRC64(0, b))
}

// fakeUpstream answers the replica handshake, sends a full sync of an
// empty RDB at offset 0, then, once gate is closed (nil: at once), the
// stream as fast as the socket takes it.
func fakeUpstream(stream []byte, gate <-chan struct{}) (string, func(), error) {
	tcp, err := loopback.Listen()
	if err != nil {
		return "", nil, err
	}
	ln := tlsOf.listener(tcp)
	id := strings.Repeat("f", 40)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if !strings.HasPrefix(line, "*") {
						continue
					}
					n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
					var args []string
					for range n {
						if _, err := br.ReadString('\n'); err != nil {
							return
						}
						a, _ := br.ReadString('\n')
						args = append(args, strings.TrimSpace(a))
					}
					switch strings.ToUpper(args[0]) {
					case "PING":
						fmt.Fprint(conn, "+PONG\r\n")
					case "PSYNC":
						rdb := minimalRDB()
						fmt.Fprintf(conn, "+FULLRESYNC %s 0\r\n$%d\r\n", id, len(rdb))
						conn.Write(rdb)
						go io.Copy(io.Discard, br) // ACKs
						if gate != nil {
							<-gate
						}
						conn.Write(stream)
						time.Sleep(time.Hour) // keep the link open; the scenario closes it
						return
					default:
						fmt.Fprint(conn, "+OK\r\n")
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), func() { ln.Close() }, nil
}

// sink is a synthetic replica: PSYNC, skip the payload, read n stream
// bytes. ready (if not nil) hears when the payload is read.
func sink(addr string, n int64, ready func()) error {
	conn, err := tlsOf.dial(addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 1<<20)
	if err := psync.Handshake(conn, br, psync.HandshakeConfig{ListeningPort: 1}); err != nil {
		return err
	}
	reply, err := psync.Psync(conn, br, "", -1, nil)
	if err != nil || reply.Kind != psync.ReplyFullResync {
		return fmt.Errorf("sink PSYNC: %+v %v", reply, err)
	}
	h, err := psync.ReadPayloadHeader(br, nil)
	if err != nil {
		return err
	}
	if _, err := psync.CopyPayload(io.Discard, br, h, nil); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	// ACK at once, as a replica does after loading: the sinks all announce
	// one address, and a sink that got the payload and hung up before its
	// first ACK would count as a replica that failed to load it.
	if _, err := conn.Write(psync.AckCommand(reply.Offset)); err != nil {
		return err
	}
	done := make(chan struct{})
	defer close(done)
	var got int64
	var mu sync.Mutex
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				mu.Lock()
				off := reply.Offset + got
				mu.Unlock()
				conn.Write(psync.AckCommand(off))
			}
		}
	}()
	buf := make([]byte, 1<<20)
	for got < n {
		m, err := br.Read(buf)
		mu.Lock()
		got += int64(m)
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("sink read after %d bytes: %w", got, err)
		}
	}
	return nil
}

// rates fills the columns every row shares: the stream's own rate, and
// the aggregate over sinks (none for the page-cache row).
func (rw *row) rates(streamLen, sinks int, secs float64) {
	rw.Values["seconds"] = secs
	rw.Values["stream MB/s"] = float64(streamLen) / secs / 1e6
	if sinks > 0 {
		rw.Values["aggregate MB/s"] = float64(streamLen) * float64(sinks) / secs / 1e6
	}
}

// newPageWrite writes stream to a new file at path as the proxy appends
// it, and leaves the file in place.
func newPageWrite(path string, stream []byte) (float64, error) {
	return writeNewFile(path, int64(len(stream)), func(off int64) []byte {
		return stream[off:min(off+readChunk, int64(len(stream)))]
	})
}

// writeNewFile writes total bytes to a new file at path, chunk(off)
// giving the bytes at off, and returns the seconds the writes took.
func writeNewFile(path string, total int64, chunk func(off int64) []byte) (float64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	for off := int64(0); off < total && err == nil; {
		var n int
		n, err = f.Write(chunk(off))
		off += int64(n)
	}
	secs := time.Since(start).Seconds()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("page-cache write: %w", err)
	}
	return secs, nil
}

// readChunk is the proxy's upstream read size at full speed, and the
// plain fan-out's.
const readChunk = 256 << 10

func proxyCeiling(c *common, stream []byte, rw *row) error {
	up, closeUp, err := fakeUpstream(stream, nil)
	if err != nil {
		return err
	}
	defer closeUp()
	p, err := startProxyProc(c.proxyBin, up, c.dir("ceiling", "data"), c.dir("ceiling", "replproxy.log"), int64(len(stream))*2, c.extra...)
	if err != nil {
		return err
	}
	defer p.kill()
	// Sinks attach once the snapshot exists, then everything is timed from
	// the first one's PSYNC; the upstream streams from its own start, so the
	// proxy may already hold part of the stream: that is the point of it.
	if err := waitFor(time.Minute, func() bool {
		m, err := infoOf(p.addr, "replication")
		return err == nil && m["master_link_status"] == "up"
	}); err != nil {
		return err
	}
	cpu0, _ := procStats(p.PID())
	start := time.Now()
	errs := make(chan error, c.replicas)
	for range c.replicas {
		go func() { errs <- sink(p.addr, int64(len(stream)), nil) }()
	}
	for range c.replicas {
		if err := <-errs; err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	cpu, rss := procStats(p.PID())
	rw.rates(len(stream), c.replicas, secs)
	rw.Values["relay CPU s per GB in"] = (cpu - cpu0) / (float64(len(stream)) / 1e9)
	rw.Values["relay peak RSS MB"] = float64(rss >> 20)
	return nil
}

// plainFanout: one source socket, a relay goroutine that copies each read
// to k sink sockets, k readers. The physical reference for the machine.
func plainFanout(stream []byte, k int) (float64, error) {
	srcTCP, err := loopback.Listen()
	if err != nil {
		return 0, err
	}
	srcLn := tlsOf.listener(srcTCP)
	defer srcLn.Close()
	sinkTCP, err := loopback.Listen()
	if err != nil {
		return 0, err
	}
	sinkLn := tlsOf.listener(sinkTCP)
	defer sinkLn.Close()
	go func() {
		c, err := srcLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(stream)
	}()
	var readers sync.WaitGroup
	for range k {
		readers.Go(func() {
			c, err := tlsOf.dial(sinkLn.Addr().String(), 5*time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			io.CopyN(io.Discard, c, int64(len(stream)))
		})
	}
	var outs []net.Conn
	for range k {
		c, err := sinkLn.Accept()
		if err != nil {
			return 0, err
		}
		defer c.Close()
		outs = append(outs, c)
	}
	src, err := tlsOf.dial(srcLn.Addr().String(), 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	start := time.Now()
	buf := make([]byte, readChunk)
	var n int64
	for n < int64(len(stream)) {
		m, err := src.Read(buf)
		for _, o := range outs {
			if _, werr := o.Write(buf[:m]); werr != nil {
				return 0, werr
			}
		}
		n += int64(m)
		if err != nil {
			break
		}
	}
	readers.Wait()
	return time.Since(start).Seconds(), nil
}

// chainedCeiling: the same stream through a stock replica. Its sinks can
// only get the stream from the moment they attach (its backlog is small),
// so they attach first and the upstream streams once all are in.
func chainedCeiling(c *common, stream []byte, rw *row) error {
	gate := make(chan struct{})
	up, closeUp, err := fakeUpstream(stream, gate)
	if err != nil {
		close(gate)
		return err
	}
	defer closeUp()
	opened := false
	open := func() {
		if !opened {
			opened = true
			close(gate)
		}
	}
	defer open() // unblock the upstream's writer on every path
	host, port, _ := net.SplitHostPort(up)
	mid, err := redistest.StartTLS(c.dir("ceiling", "chained"), c.tls.redis(), "--replicaof", host, port, "--repl-diskless-sync-delay", "0")
	if err != nil {
		return err
	}
	defer mid.Kill()
	if err := waitFor(time.Minute, func() bool {
		m, err := mid.Info("replication")
		return err == nil && m["master_link_status"] == "up"
	}); err != nil {
		return err
	}
	ready := make(chan struct{}, c.replicas)
	errs := make(chan error, c.replicas)
	for range c.replicas {
		go func() { errs <- sink(mid.Addr(), int64(len(stream)), func() { ready <- struct{}{} }) }()
	}
	for range c.replicas {
		select {
		case <-ready:
		case err := <-errs:
			return err
		}
	}
	cpu0, _ := procStats(mid.PID())
	start := time.Now()
	open()
	for range c.replicas {
		if err := <-errs; err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	cpu, rss := procStats(mid.PID())
	rw.rates(len(stream), c.replicas, secs)
	rw.Values["relay CPU s per GB in"] = (cpu - cpu0) / (float64(len(stream)) / 1e9)
	rw.Values["relay peak RSS MB"] = float64(rss >> 20)
	return nil
}
