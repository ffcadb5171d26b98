package tlsconf

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/testcert"
)

func TestReloadKeepsGoodMaterial(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := ca.Issue(dir, "a", "a")
	b, _ := ca.Issue(dir, "b", "b")
	crt, key := filepath.Join(dir, "live.crt"), filepath.Join(dir, "live.key")
	link := func(target, name string) {
		_ = os.Remove(name + ".new")
		if err := os.Symlink(target, name+".new"); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(name+".new", name); err != nil {
			t.Fatal(err)
		}
	}
	link(a.CertFile, crt)
	link(a.KeyFile, key)
	src, err := Load("server", Files{Cert: crt, Key: key, CA: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	if src.Changed() {
		t.Fatal("unchanged files reported as changed")
	}
	link(b.CertFile, crt) // a's key stays: a mismatched pair
	if !src.Changed() {
		t.Fatal("a swapped symlink is not seen")
	}
	if err := src.Reload(); err == nil {
		t.Fatal("a mismatched pair loaded")
	}
	if st := src.Status(); st.Serial.Cmp(a.Serial) != 0 || st.Failures != 1 || st.LastError == "" {
		t.Fatalf("after a failed reload: %+v", st)
	}
	if src.Changed() {
		t.Fatal("a failed generation is retried before the files change again")
	}
	link(b.KeyFile, key)
	if !src.Changed() || src.Reload() != nil {
		t.Fatal("the completed rotation does not load")
	}
	if st := src.Status(); st.Serial.Cmp(b.Serial) != 0 || st.Reloads != 1 || st.LastError != "" {
		t.Fatalf("after the rotation: %+v", st)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.pem"), []byte("no pem here"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load("x", Files{CA: filepath.Join(dir, "empty.pem")}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a CA file without certificates: %v", err)
	}
	if _, err := Load("x", Files{Cert: crt}); err == nil {
		t.Fatal("a certificate without its key loaded")
	}
}

// TestClientVerification: by name against the server's SANs; chain only
// for a server dialled by an address its certificate does not carry.
func TestClientVerification(t *testing.T) {
	dir := t.TempDir()
	ca, _ := testcert.NewCA(dir, "ca")
	other, _ := testcert.NewCA(dir, "other")
	srv, _ := ca.Issue(dir, "srv", "srv")
	foreign, _ := other.Issue(dir, "foreign", "foreign")
	serve := func(p testcert.Pair) string {
		s, err := Load("server", Files{Cert: p.CertFile, Key: p.KeyFile})
		if err != nil {
			t.Fatal(err)
		}
		tcp, err := loopback.Listen()
		if err != nil {
			t.Fatal(err)
		}
		ln := tls.NewListener(tcp, s.ServerConfig(AuthNo))
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	good, bad := serve(srv), serve(foreign)
	cli, err := Load("upstream", Files{CA: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(addr string, o ClientOptions) error {
		c, err := tls.Dial("tcp", addr, cli.ClientConfig(o))
		if err == nil {
			c.Close()
		}
		return err
	}
	host, _, _ := net.SplitHostPort(good)
	for _, tc := range []struct {
		addr string
		o    ClientOptions
		ok   bool
	}{
		{good, ClientOptions{ServerName: host}, true},
		{good, ClientOptions{ServerName: "elsewhere.example"}, false},
		{good, ClientOptions{ChainOnly: true}, true},
		{bad, ClientOptions{ServerName: host}, false},
		{bad, ClientOptions{ChainOnly: true}, false},
		{bad, ClientOptions{InsecureSkipVerify: true}, true},
	} {
		if err := dial(tc.addr, tc.o); (err == nil) != tc.ok {
			t.Errorf("%s %+v: err %v, want ok=%v", tc.addr, tc.o, err, tc.ok)
		}
	}
}
