package command

import (
	"crypto/tls"
	"errors"
	"strconv"
	"strings"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/tidwall/resp"
)

func (s *session) auth(args [][]byte) error {
	pass := args[len(args)-1]
	user := acl.DefaultUser
	if len(args) == 2 {
		user = string(args[0])
	} else if s.srv.sec.Users.Load().DefaultOpen() {
		// As Redis: the one-argument form with a nopass default user.
		return s.errorf("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
	}
	if err := s.checkAuth([]byte(user), pass); err != nil {
		return s.reply(resp.ErrorValue(err)) // counted and logged by checkAuth
	}
	return s.ok()
}

func (s *session) hello(args [][]byte) error {
	if len(args) > 0 {
		if v, err := strconv.Atoi(string(args[0])); err != nil || v < 2 || v > 3 {
			return s.errorf("NOPROTO unsupported protocol version")
		} else if v == 3 {
			return s.errorf("NOPROTO replproxy speaks RESP2 only")
		}
		for i := 1; i < len(args); i++ {
			switch strings.ToLower(string(args[i])) {
			case "auth":
				if i+2 >= len(args) {
					return s.errorf("ERR Syntax error in HELLO option 'auth'")
				}
				if err := s.checkAuth(args[i+1], args[i+2]); err != nil {
					return s.reply(resp.ErrorValue(err))
				}
				i += 2
			case "setname":
				if i+1 >= len(args) {
					return s.errorf("ERR Syntax error in HELLO option 'setname'")
				}
				s.clientName.Store(string(args[i+1]))
				i++
			default:
				return s.errorf("ERR Syntax error in HELLO option '%s'", vocab.Truncate(string(args[i]), 32))
			}
		}
	}
	if !s.authed {
		return s.reply(resp.ErrorValue(errors.New("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")))
	}
	return s.reply(resp.ArrayValue([]resp.Value{
		resp.StringValue("server"), resp.StringValue("redis"),
		resp.StringValue("version"), resp.StringValue(s.srv.daemon.RedisVersion()),
		resp.StringValue("proto"), resp.IntegerValue(2),
		resp.StringValue("id"), resp.IntegerValue(int(s.id)),
		resp.StringValue("mode"), resp.StringValue("standalone"),
		resp.StringValue("role"), resp.StringValue("replica"),
		resp.StringValue("modules"), resp.ArrayValue(nil),
	}))
}

func (s *session) checkAuth(user, pass []byte) error {
	users := s.srv.sec.Users.Load()
	name := string(user)
	if fail := users.Check(name, pass); fail != "" {
		s.srv.sec.AuthFailed(string(fail), s.addr, nil)
		return errWrongPass
	}
	s.authed = true
	s.user.Store(name)
	return nil
}

// authUser is the user the session authenticated as; "" before.
func (s *session) authUser() string {
	u, _ := s.user.Load().(string)
	return u
}

// identity is who the session authenticated as: its user and, on TLS, the
// CN of a verified client certificate.
func (s *session) identity() vocab.Identity {
	id := vocab.Identity{User: s.authUser()}
	if tc, ok := s.conn.(*tls.Conn); ok {
		if cs := tc.ConnectionState(); len(cs.VerifiedChains) > 0 && len(cs.PeerCertificates) > 0 {
			id.CN = cs.PeerCertificates[0].Subject.CommonName
		}
	}
	return id
}
