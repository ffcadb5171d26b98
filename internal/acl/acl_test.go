package acl

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestParseAndCheck(t *testing.T) {
	h := sha256.Sum256([]byte("hashed-pw"))
	file := "user alice on >a1 >a2 ~* &* +@all\n" +
		"\n" +
		"user bob off >b1\n" +
		"user carol on #" + hex.EncodeToString(h[:]) + "\n" +
		"user dave on nopass\n" +
		"user erin on >e1 <e1\n" +
		"user frank on >f1 resetpass >f2\n" +
		"user gina\n" +
		"user HASHUP on #" + strings.ToUpper(hex.EncodeToString(h[:])) + "\n"
	us, err := Parse(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, pass string
		want       Failure
	}{
		{"alice", "a1", ""}, {"alice", "a2", ""}, {"alice", "a3", WrongPassword},
		{"bob", "b1", UserDisabled}, {"carol", "hashed-pw", ""}, {"carol", "x", WrongPassword},
		{"dave", "anything", ""}, {"erin", "e1", WrongPassword}, {"frank", "f1", WrongPassword},
		{"frank", "f2", ""}, {"gina", "", UserDisabled}, {"nobody", "x", UnknownUser},
		{"HASHUP", "hashed-pw", ""}, {"default", "x", UnknownUser},
	} {
		if got := us.Check(tc.user, []byte(tc.pass)); got != tc.want {
			t.Errorf("Check(%s, %s) = %q, want %q", tc.user, tc.pass, got, tc.want)
		}
	}
	if u := us.Lookup("alice"); strings.Join(u.Ignored, " ") != "~* &* +@all" {
		t.Errorf("alice's ignored rules: %q", u.Ignored)
	}
	d := us.WithDefault("")
	if !d.DefaultOpen() || us.Has(DefaultUser) {
		t.Error("an implicit default user is on and nopass, and not added to the original")
	}
	p := us.WithDefault("req")
	if p.DefaultOpen() || p.Check(DefaultUser, []byte("req")) != "" || p.Check(DefaultUser, []byte("x")) != WrongPassword {
		t.Error("requirepass is the default user's password")
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"usr alice on\n", "line 1: should start with user keyword"},
		{"user\n", "line 1: should start with user keyword"},
		{"user a on\nuser a off\n", "line 2: duplicate user 'a' found"},
		{"user a on #abc\n", "line 1: error in user declaration 'a': the password hash must be exactly 64 characters"},
		{"user a on bogus\n", `line 1: error in user declaration 'a': syntax error in rule "bogus"`},
		{"# comment\n", "line 1: should start with user keyword"},
	} {
		_, err := Parse(strings.NewReader(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.file, err, tc.want)
		}
	}
}

// FuzzParse: any input parses or fails cleanly, and whatever parses
// answers Check for every user it names without panicking.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"user a on >p\n", "user b off #" + strings.Repeat("ab", 32) + "\n", "user c on nopass ~* +@all\n",
		"user d reset on >x <x resetpass\n", "user\n", "user e on !" + strings.Repeat("0", 64) + "\n", "user f (~x +get)\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		us, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, n := range us.Names() {
			_ = us.Check(n, []byte("p"))
		}
		_ = us.WithDefault("x").DefaultOpen()
	})
}
