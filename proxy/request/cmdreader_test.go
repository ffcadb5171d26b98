package request

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestCmdReader(t *testing.T) {
	in := "PING\r\n\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nSYNC\r\nset a c\r\n"
	rd := NewReader(bufio.NewReader(strings.NewReader(in)))
	want := []string{"PING", "", "ECHO hi", "SYNC", "set|a|c"}
	for _, w := range want {
		args, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, a := range args {
			parts = append(parts, string(a))
		}
		got := strings.Join(parts, " ")
		if strings.Contains(w, "|") {
			got = strings.Join(parts, "|")
		}
		if got != w {
			t.Fatalf("got %q want %q", got, w)
		}
	}
}

func TestCmdReaderLimits(t *testing.T) {
	for _, in := range []string{
		"*1025\r\n", "*1\r\n$65537\r\n", strings.Repeat("x", maxInlineLen+10) + "\r\n",
		"*1\r\n$3\r\nabcde", "*1\r\n+ok\r\n", "*1\n\n",
		"set \"a b\"c\r\n", "PING \"abc\r\n", "PING 'abc\r\n", "*x\r\n", "*" + strings.Repeat("1", 40) + "\r\n",
	} {
		_, err := NewReader(bufio.NewReader(strings.NewReader(in))).Next()
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Errorf("%.30q: %v, want a protocol error", in, err)
		}
	}
}

// TestInlineQuotes: inline commands split as Redis' sdssplitargs does.
func TestInlineQuotes(t *testing.T) {
	for in, want := range map[string][]string{
		"set \"a b\" c\r\n":          {"set", "a b", "c"},
		"  a \t b  \r\n":             {"a", "b"},
		`echo "x\x41\n\"y"` + "\r\n": {"echo", "xA\n\"y"},
		`echo 'it\'s' '\n'` + "\n":   {"echo", "it's", `\n`},
		`echo ""` + "\n":             {"echo", ""},
		`echo "\xZZ"` + "\n":         {"echo", "xZZ"},
	} {
		args, err := NewReader(bufio.NewReader(strings.NewReader(in))).Next()
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		var got []string
		for _, a := range args {
			got = append(got, string(a))
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// FuzzCmdReader: any input gives commands, a clean protocol error or EOF,
// never a panic, and never an argument past the limits.
func FuzzCmdReader(f *testing.F) {
	f.Add([]byte("*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$3\r\n100\r\n\n"))
	f.Add([]byte("PSYNC ? -1\r\nSYNC\r\n"))
	f.Add([]byte("*1\r\n$-1\r\n"))
	f.Add([]byte("\"unbalanced\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := NewReader(bufio.NewReaderSize(bytes.NewReader(b), 16))
		for range 100 {
			args, err := rd.Next()
			if err != nil {
				return
			}
			if len(args) > maxArgs {
				t.Fatalf("%d args", len(args))
			}
			for _, a := range args {
				if len(a) > maxInlineLen {
					t.Fatalf("argument of %d bytes", len(a))
				}
			}
		}
	})
}
