package command

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/resp"

	"github.com/replproxy/replproxy/proxy/vocab"
)

// Commands that tools around Redis send to every instance they watch:
// Sentinel's failover transaction, redis_exporter's LATENCY and SLOWLOG,
// CLIENT LIST/KILL. Answered truthfully for a proxy.

// latencyReply answers LATENCY: the proxy records no latency events.
func latencyReply(c *commandStats, args [][]byte) resp.Value {
	if len(args) == 0 {
		return errorValue("ERR wrong number of arguments for 'latency' command")
	}
	switch strings.ToLower(string(args[0])) {
	case "latest", "history":
		return resp.ArrayValue(nil) // no latency monitor events: the proxy runs no slow operation on its event path
	case "histogram":
		var names []string
		for _, a := range args[1:] {
			names = append(names, strings.ToLower(string(a)))
		}
		return c.histogram(names)
	case "reset":
		return resp.IntegerValue(0)
	case "doctor":
		return resp.StringValue("Dave, no latency spike was observed during the lifetime of this Redis instance, not in the slightest bit. I honestly think you ought to sleep tonight.\n")
	}
	return errorValue("ERR unknown subcommand '%s'. Try LATENCY HELP.", vocab.Truncate(string(args[0]), 32))
}

// slowlogReply answers SLOWLOG: nothing the proxy runs is slow to log.
func slowlogReply(args [][]byte) resp.Value {
	if len(args) == 0 {
		return errorValue("ERR wrong number of arguments for 'slowlog' command")
	}
	switch strings.ToLower(string(args[0])) {
	case "get":
		return resp.ArrayValue(nil)
	case "len":
		return resp.IntegerValue(0)
	case "reset":
		return resp.SimpleStringValue("OK")
	}
	return errorValue("ERR unknown subcommand '%s'. Try SLOWLOG HELP.", vocab.Truncate(string(args[0]), 32))
}

// errorValue is an error reply.
func errorValue(format string, a ...any) resp.Value { return resp.ErrorValue(fmt.Errorf(format, a...)) }

// clientLine is one CLIENT LIST line, in Redis' field order (a subset).
func (s *session) clientLine(now time.Time) string {
	flags := "N"
	sub, psub := s.subCount.Load(), s.psubCount.Load()
	switch {
	case s.rep.Load() != nil:
		flags = "S"
	case sub+psub > 0:
		flags = "P"
	}
	laddr := ""
	if a := s.raw.LocalAddr(); a != nil {
		laddr = a.String()
	}
	name, _ := s.clientName.Load().(string)
	user := s.authUser()
	if user == "" {
		user = "default"
	}
	return fmt.Sprintf("id=%d addr=%s laddr=%s fd=-1 name=%s age=%d idle=0 flags=%s db=0 sub=%d psub=%d ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=NULL user=%s redir=-1 resp=2",
		s.id, s.addr, laddr, name, int64(now.Sub(s.startTime).Seconds()), flags, sub, psub, user)
}

// clientKill is CLIENT KILL in both forms: ADDR alone (old), or filters
// (ID, TYPE normal|replica|slave|pubsub|master, ADDR, LADDR, USER,
// SKIPME); it answers as Redis does.
func (s *session) clientKill(args [][]byte) error {
	d := s.srv
	if len(args) == 1 {
		addr := string(args[0])
		victims := d.selectSessions(func(o *session) bool { return o.addr == addr })
		if len(victims) == 0 {
			return s.errorf("ERR No such client")
		}
		s.kill(victims)
		return s.ok()
	}
	if len(args)%2 != 0 {
		return s.errorf("ERR syntax error")
	}
	skipme := true
	var preds []func(*session) bool
	for i := 0; i < len(args); i += 2 {
		key, val := strings.ToLower(string(args[i])), string(args[i+1])
		switch key {
		case "id":
			id, err := strconv.ParseInt(val, 10, 64)
			if err != nil || id <= 0 {
				return s.errorf("ERR client-id should be greater than 0")
			}
			preds = append(preds, func(o *session) bool { return o.id == id })
		case "type":
			switch t := strings.ToLower(val); t {
			case "normal":
				preds = append(preds, func(o *session) bool { return o.rep.Load() == nil && o.subCount.Load()+o.psubCount.Load() == 0 })
			case "replica", "slave":
				preds = append(preds, func(o *session) bool { return o.rep.Load() != nil })
			case "pubsub":
				preds = append(preds, func(o *session) bool { return o.subCount.Load()+o.psubCount.Load() > 0 })
			case "master":
				preds = append(preds, func(*session) bool { return false }) // no master clients here
			default:
				return s.errorf("ERR Unknown client type '%s'", vocab.Truncate(val, 32))
			}
		case "addr":
			preds = append(preds, func(o *session) bool { return o.addr == val })
		case "laddr":
			preds = append(preds, func(o *session) bool { a := o.raw.LocalAddr(); return a != nil && a.String() == val })
		case "user":
			preds = append(preds, func(o *session) bool { return o.authUser() == val })
		case "skipme":
			switch strings.ToLower(val) {
			case "yes":
				skipme = true
			case "no":
				skipme = false
			default:
				return s.errorf("ERR syntax error")
			}
		default:
			return s.errorf("ERR syntax error")
		}
	}
	victims := d.selectSessions(func(o *session) bool {
		if skipme && o == s {
			return false
		}
		for _, p := range preds {
			if !p(o) {
				return false
			}
		}
		return true
	})
	s.kill(victims)
	return s.reply(resp.IntegerValue(len(victims)))
}

func (s *session) kill(victims []*session) {
	for _, v := range victims {
		if v == s {
			s.closeAfterReply = true
			continue
		}
		s.log.Info("client killed by CLIENT KILL", "victim", v.id, "victim_addr", v.addr)
		v.close(vocab.DownClosed)
	}
}

// commandInfo answers COMMAND INFO [name ...] (and bare COMMAND): a nil
// per unknown name, as Redis, and a minimal entry per command served here
// (redis_exporter probes COMMAND INFO COMMANDLOG to detect Valkey 8.1).
func commandInfo(names [][]byte) resp.Value {
	entry := func(name string) resp.Value {
		return resp.ArrayValue([]resp.Value{resp.StringValue(name), resp.IntegerValue(-1),
			resp.ArrayValue(nil), resp.IntegerValue(0), resp.IntegerValue(0), resp.IntegerValue(0),
			resp.ArrayValue(nil), resp.ArrayValue(nil), resp.ArrayValue(nil), resp.ArrayValue(nil)})
	}
	var out []resp.Value
	if names == nil {
		for _, n := range SupportedCommands {
			out = append(out, entry(n))
		}
		return resp.ArrayValue(out)
	}
	for _, n := range names {
		name := strings.ToLower(string(n))
		if slices.Contains(SupportedCommands, name) {
			out = append(out, entry(name))
		} else {
			out = append(out, resp.NullValue())
		}
	}
	return resp.ArrayValue(out)
}

// commandReply answers COMMAND: enough for redis-cli (COMMAND DOCS for
// hints) and tools that count the commands a proxy answers.
func commandReply(args [][]byte) resp.Value {
	if len(args) == 0 {
		return commandInfo(nil)
	}
	switch strings.ToLower(string(args[0])) {
	case "count":
		return resp.IntegerValue(len(SupportedCommands))
	case "info":
		return commandInfo(args[1:])
	case "list":
		var names []resp.Value
		for _, n := range SupportedCommands {
			names = append(names, resp.StringValue(n))
		}
		return resp.ArrayValue(names)
	}
	return resp.ArrayValue(nil) // DOCS: no docs, which redis-cli accepts
}

// config answers CONFIG GET, REWRITE and RESETSTAT.
func (p *Server) config(args [][]byte) resp.Value {
	switch {
	case len(args) >= 2 && strings.EqualFold(string(args[0]), "get"):
		return p.configGet(args[1:])
	case len(args) == 1 && strings.EqualFold(string(args[0]), "rewrite"):
		return resp.SimpleStringValue("OK") // Sentinel's follow-up to SLAVEOF: REPLICAOF is persisted already
	case len(args) == 1 && strings.EqualFold(string(args[0]), "resetstat"):
		p.commands.reset()
		return resp.SimpleStringValue("OK")
	}
	return errorValue("ERR replproxy supports only CONFIG GET, CONFIG REWRITE and CONFIG RESETSTAT; its settings are flags")
}
