package replproxy_test

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/config"
	"github.com/replproxy/replproxy/metrics"
)

var update = flag.Bool("update", false, "rewrite the generated README sections")

// TestReadmeTablesMatchCode keeps the flag and metric tables in README.md
// generated from the code: run `go test . -update` after changing either.
func TestReadmeTablesMatchCode(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, sec := range []struct{ name, body string }{
		{"flags", config.FlagTable()},
		{"metrics", metrics.CatalogTable()},
	} {
		begin, end := "<!-- generated:"+sec.name+" -->\n", "<!-- end:"+sec.name+" -->"
		i, j := strings.Index(readme, begin), strings.Index(readme, end)
		if i < 0 || j < i {
			t.Fatalf("README.md lacks the %s markers", sec.name)
		}
		current := readme[i+len(begin) : j]
		if current == sec.body {
			continue
		}
		if !*update {
			t.Errorf("README.md %s table is out of date; run: go test . -update", sec.name)
			continue
		}
		readme = readme[:i+len(begin)] + sec.body + readme[j:]
	}
	if *update {
		if err := os.WriteFile("README.md", []byte(readme), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
