package command

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/tidwall/resp"
)

// replicaof moves the upstream, as REPLICAOF moves a Redis replica: for an
// operator repointing the proxy after a failover. The proxy never becomes a
// master, so NO ONE is refused.
func (s *session) replicaof(host, port string) error {
	if strings.EqualFold(host, "no") && strings.EqualFold(port, "one") {
		return s.errorf("ERR replproxy never becomes a master; promote a Redis replica and point replproxy at it with REPLICAOF <host> <port>")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return s.errorf("ERR Invalid master port")
	}
	if host == "" || strings.ContainsAny(host, " \r\n") {
		return s.errorf("ERR Invalid master host")
	}
	if s.srv.isSelf(host, n) {
		return s.errorf("ERR %s:%d is this replproxy itself", host, n)
	}
	if !s.srv.daemon.MoveUpstream(net.JoinHostPort(host, port)) {
		return s.reply(resp.SimpleStringValue("OK Already connected to specified master"))
	}
	return s.ok()
}

// replproxyCommand is REPLPROXY GUARD STATUS|ACCEPT: the operator's side
// of the empty-origin guard.
func (s *session) replproxyCommand(args [][]byte) error {
	if len(args) != 2 || !strings.EqualFold(string(args[0]), "guard") {
		return s.errorf("ERR usage: REPLPROXY GUARD STATUS|ACCEPT")
	}
	switch strings.ToLower(string(args[1])) {
	case "status":
		return s.reply(resp.StringValue(GuardText(s.srv.daemon.Status().Guard)))
	case "accept":
		err := s.srv.daemon.GuardAccept()
		switch {
		case errors.Is(err, vocab.ErrNothingHeld):
			return s.errorf("ERR the guard holds no history: nothing to accept")
		case err != nil:
			s.log.Error("guard accept failed", "err", err)
			return s.errorf("ERR guard accept failed: %s", vocab.OneLine(err.Error()))
		}
		s.log.Warn("guard: an operator accepted the held history")
		return s.ok()
	}
	return s.errorf("ERR unknown REPLPROXY GUARD subcommand '%s': want STATUS or ACCEPT", vocab.Truncate(string(args[1]), 32))
}

// replconf follows replconfCommand(): option/value pairs, +OK, no reply for
// ack and getack, unknown capabilities ignored.
func (s *session) replconf(args [][]byte) error {
	if len(args)%2 != 0 || len(args) == 0 {
		return s.errorf("ERR syntax error")
	}
	for i := 0; i < len(args); i += 2 {
		opt, val := strings.ToLower(string(args[i])), string(args[i+1])
		switch opt {
		case "listening-port":
			port, err := strconv.Atoi(val)
			if err != nil || port < 0 || port > 65535 {
				return s.errorf("ERR value is not an integer or out of range")
			}
			s.ListeningPort = port
		case "ip-address":
			if len(val) >= 256 {
				return s.errorf("ERR REPLCONF ip-address provided by replica instance is too long: %d bytes", len(val))
			}
			s.IPAddress = val
		case "capa":
			switch strings.ToLower(val) {
			case "eof":
				s.CapaEOF = true
			case "psync2":
				s.CapaPsync2 = true
			}
		case "ack", "getack":
			return nil // no reply; ACKs matter only once the link is a replica
		case "rdb-only":
			switch val {
			case "0":
				s.RDBOnly = false
			case "1":
				s.RDBOnly = true
			default:
				return s.errorf("ERR syntax error")
			}
		case "rdb-filter-only":
			// As Redis 7: a space-separated list of filters, "functions"
			// the only one; none at all means no data.
			s.FilterAll, s.FilterFunctions = false, false
			for _, f := range strings.Fields(val) {
				if !strings.EqualFold(f, "functions") {
					return s.errorf("ERR Unsupported rdb-filter-only option: %s", vocab.Truncate(f, 64))
				}
				s.FilterFunctions = true
			}
			s.FilterAll = !s.FilterFunctions // redis-cli --replica: no data, the live stream only
		case "version":
			s.Version = vocab.Truncate(val, 32)
		default:
			return s.errorf("ERR Unrecognized REPLCONF option: %s", vocab.Truncate(string(args[i]), 64))
		}
	}
	return s.ok()
}

func (s *session) client(args [][]byte) error {
	if len(args) == 0 {
		return s.errorf("ERR wrong number of arguments for 'client' command")
	}
	switch strings.ToLower(string(args[0])) {
	case "setname":
		if len(args) != 2 {
			return s.errorf("ERR wrong number of arguments for 'client|setname' command")
		}
		s.clientName.Store(string(args[1]))
		return s.ok()
	case "getname":
		name, _ := s.clientName.Load().(string)
		if name == "" {
			return s.reply(resp.NullValue())
		}
		return s.reply(resp.StringValue(name))
	case "setinfo":
		return s.ok()
	case "id":
		return s.reply(resp.IntegerValue(int(s.id)))
	case "list":
		now := time.Now()
		var b strings.Builder
		for _, o := range s.srv.selectSessions(func(*session) bool { return true }) {
			b.WriteString(o.clientLine(now) + "\n")
		}
		return s.reply(resp.StringValue(b.String()))
	case "info":
		return s.reply(resp.StringValue(s.clientLine(time.Now()) + "\n"))
	case "kill":
		if len(args) < 2 {
			return s.errorf("ERR wrong number of arguments for 'client|kill' command")
		}
		return s.clientKill(args[1:])
	}
	return s.errorf("ERR replproxy supports CLIENT SETNAME, GETNAME, SETINFO, ID, LIST, INFO and KILL")
}
