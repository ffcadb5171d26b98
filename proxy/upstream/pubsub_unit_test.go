package upstream

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/replproxy/replproxy/psync"
)

// publishesOf feeds stream to a scanner in the given chunk sizes and
// returns what streamPublishes found, as appendStream drives it.
func publishesOf(t testing.TB, stream []byte, cuts []int) []publication {
	pubs, _ := publishesOrError(stream, cuts)
	return pubs
}

func publishesOrError(stream []byte, cuts []int) ([]publication, error) {
	var sc psync.Scanner
	var sp streamPublishes
	var out []publication
	for len(stream) > 0 {
		n := len(stream)
		if len(cuts) > 0 {
			n = min(max(cuts[0], 1), n)
			cuts = cuts[1:]
		}
		chunk := stream[:n]
		stream = stream[n:]
		var found [][2]int
		if err := sc.Scan(chunk, func(end int, c *psync.Command) {
			if c.Argc == 3 && c.Name() == "publish" {
				found = append(found, [2]int{end, int(c.Size)})
			}
		}); err != nil {
			return out, err // appendStream refuses such a chunk and the history with it
		}
		sp.scan(chunk, found, &sc, func(channel, msg []byte) { // valid during the call only
			out = append(out, publication{bytes.Clone(channel), bytes.Clone(msg)})
		})
	}
	return out, nil
}

type publication struct{ channel, msg []byte }

func respCmd(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

func sampleStream() ([]byte, []publication) {
	var s []byte
	var want []publication
	for i := range 5 {
		s = append(s, respCmd("SET", fmt.Sprintf("k%d", i), "v")...)
		msg := bytes.Repeat([]byte{byte('a' + i)}, 1+i*7)
		s = append(s, respCmd("PUBLISH", fmt.Sprintf("ch%d", i), string(msg))...)
		want = append(want, publication{[]byte(fmt.Sprintf("ch%d", i)), msg})
		s = append(s, '\n')                                 // the master's keepalive newline
		s = append(s, respCmd("publish", "x", "y", "z")...) // 4 arguments: not a PUBLISH
	}
	return s, want
}

// TestStreamPublishesEverySplit: whatever the reads cut, every PUBLISH is
// found once, byte for byte.
func TestStreamPublishesEverySplit(t *testing.T) {
	stream, want := sampleStream()
	for size := 1; size <= len(stream); size++ {
		var cuts []int
		for range len(stream)/size + 1 {
			cuts = append(cuts, size)
		}
		got := publishesOf(t, stream, cuts)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("chunks of %d: %q, want %q", size, got, want)
		}
	}
}

// FuzzStreamPublishes: random cuts find the same publications as one read.
func FuzzStreamPublishes(f *testing.F) {
	stream, _ := sampleStream()
	f.Add(stream, []byte{3, 100, 7})
	f.Add(respCmd("PUBLISH", "c", "m"), []byte{1})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		whole, err := publishesOrError(stream, nil)
		if err != nil {
			t.Skip("not a valid stream")
		}
		var c []int
		for _, b := range cuts {
			c = append(c, int(b))
		}
		if got := publishesOf(t, stream, c); fmt.Sprint(got) != fmt.Sprint(whole) {
			t.Fatalf("cut %v: %q, one read: %q", c, got, whole)
		}
	})
}
