// Package acl reads users from a file in a subset of Redis' ACL-file
// syntax and checks credentials against them, with Redis' rules: one
// `user NAME rule...` per line, users off until `on`, passwords as
// `>clear` or `#sha256-hex`, `nopass` for any password.
//
// replproxy serves no data, so key, channel and command rules (~keys,
// &channels, +@all, allcommands...) are accepted for compatibility with
// existing files and reported as not enforced: an enabled user may
// replicate and run the proxy's commands.
package acl

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
)

// User is one ACL user.
type User struct {
	Name    string
	On      bool
	NoPass  bool
	hashes  [][sha256.Size]byte
	Ignored []string // permission rules accepted but not enforced
}

// Users is an immutable set of users.
type Users struct {
	byName map[string]*User
}

// Failure is why a credential check failed; Redis answers all of them
// with the same WRONGPASS reply.
type Failure string

const (
	UnknownUser   Failure = "unknown_user"
	UserDisabled  Failure = "user_disabled"
	WrongPassword Failure = "wrong_password"
)

// Failures lists every Failure, for metrics.
var Failures = []Failure{UnknownUser, UserDisabled, WrongPassword}

// DefaultUser is the user AUTH with one argument checks.
const DefaultUser = "default"

// Parse reads an ACL file. Errors name the line, as Redis' ACL LOAD does.
func Parse(r io.Reader) (*Users, error) {
	us := &Users{byName: map[string]*User{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if f[0] != "user" || len(f) < 2 {
			return nil, fmt.Errorf("line %d: should start with user keyword", n)
		}
		name := f[1]
		if us.byName[name] != nil {
			return nil, fmt.Errorf("line %d: duplicate user '%s' found", n, name)
		}
		u := &User{Name: name}
		for _, rule := range f[2:] {
			if err := u.apply(rule); err != nil {
				return nil, fmt.Errorf("line %d: error in user declaration '%s': %w", n, name, err)
			}
		}
		us.byName[name] = u
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return us, nil
}

// ParseFile reads the file at path.
func ParseFile(path string) (*Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	us, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return us, nil
}

// permissionWords are Redis' rules that do not concern authentication.
var permissionWords = map[string]bool{
	"allkeys": true, "allchannels": true, "allcommands": true, "nocommands": true,
	"resetkeys": true, "resetchannels": true, "clearselectors": true,
	"sanitize-payload": true, "skip-sanitize-payload": true,
}

func (u *User) apply(rule string) error {
	lower := strings.ToLower(rule)
	switch {
	case lower == "on":
		u.On = true
	case lower == "off":
		u.On = false
	case lower == "nopass":
		u.NoPass, u.hashes = true, nil
	case lower == "resetpass":
		u.NoPass, u.hashes = false, nil
	case lower == "reset":
		*u = User{Name: u.Name}
	case rule[0] == '>':
		u.addHash(sha256.Sum256([]byte(rule[1:])))
	case rule[0] == '<':
		u.removeHash(sha256.Sum256([]byte(rule[1:])))
	case rule[0] == '#' || rule[0] == '!':
		b, err := hex.DecodeString(rule[1:])
		if err != nil || len(b) != sha256.Size {
			return fmt.Errorf("the password hash must be exactly 64 characters and contain only lowercase hexadecimal characters")
		}
		var h [sha256.Size]byte
		copy(h[:], b)
		if rule[0] == '#' {
			u.addHash(h)
		} else {
			u.removeHash(h)
		}
	case permissionWords[lower] || strings.ContainsRune("~%&+-(", rune(rule[0])):
		u.Ignored = append(u.Ignored, rule)
	default:
		return fmt.Errorf("syntax error in rule %q", truncate(rule, 32))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func (u *User) addHash(h [sha256.Size]byte) {
	for _, x := range u.hashes {
		if x == h {
			return
		}
	}
	u.NoPass = false // as Redis: a password clears nopass
	u.hashes = append(u.hashes, h)
}

func (u *User) removeHash(h [sha256.Size]byte) {
	out := u.hashes[:0]
	for _, x := range u.hashes {
		if x != h {
			out = append(out, x)
		}
	}
	u.hashes = out
}

// WithDefault returns the set with a default user when the file has none,
// as Redis creates it: on, with requirepass as its password, or nopass.
func (us *Users) WithDefault(requirepass string) *Users {
	if us == nil {
		us = &Users{byName: map[string]*User{}}
	}
	if us.byName[DefaultUser] != nil {
		return us
	}
	out := &Users{byName: make(map[string]*User, len(us.byName)+1)}
	for k, v := range us.byName {
		out.byName[k] = v
	}
	d := &User{Name: DefaultUser, On: true, NoPass: requirepass == ""}
	if requirepass != "" {
		d.addHash(sha256.Sum256([]byte(requirepass)))
	}
	out.byName[DefaultUser] = d
	return out
}

// Has reports whether the file declared name.
func (us *Users) Has(name string) bool { return us != nil && us.byName[name] != nil }

// Lookup returns a user, nil when unknown.
func (us *Users) Lookup(name string) *User { return us.byName[name] }

// Names lists the users, unordered.
func (us *Users) Names() []string {
	out := make([]string, 0, len(us.byName))
	for n := range us.byName {
		out = append(out, n)
	}
	return out
}

// Check verifies a credential; "" is success.
func (us *Users) Check(name string, pass []byte) Failure {
	u := us.byName[name]
	switch {
	case u == nil:
		return UnknownUser
	case !u.On:
		return UserDisabled
	case u.NoPass:
		return ""
	}
	h := sha256.Sum256(pass)
	ok := 0
	for _, x := range u.hashes {
		ok |= subtle.ConstantTimeCompare(h[:], x[:])
	}
	if ok == 1 {
		return ""
	}
	return WrongPassword
}

// Usable reports whether a user can be on an authenticated session: it
// exists and is on.
func (us *Users) Usable(name string) bool {
	u := us.byName[name]
	return u != nil && u.On
}

// DefaultOpen reports whether new connections are authenticated as the
// default user from the start (it is on and nopass), as in Redis.
func (us *Users) DefaultOpen() bool {
	d := us.byName[DefaultUser]
	return d != nil && d.On && d.NoPass
}
