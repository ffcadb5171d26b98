package replproxy_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/replproxy/replproxy"

// layers: what each daemon package may not depend on, directly or through
// another package (go list -deps; "X/..." is X and everything under it),
// so that the folder layout is the architecture and imports point one
// way. A package not listed here has no rule yet.
var layers = map[string][]string{
	// The sync planner knows nothing of the daemon (and imports no I/O:
	// pureImports).
	module + "/proxy/plan": {module + "/proxy", module + "/proxy/..."},
	// Leaves: nothing of the daemon above them (security may use the
	// vocabulary, the one leaf below it).
	module + "/proxy/vocab":    {module + "/proxy", module + "/proxy/..."},
	module + "/proxy/pubsub":   {module + "/proxy", module + "/proxy/..."},
	module + "/proxy/request":  {module + "/proxy", module + "/proxy/..."},
	module + "/proxy/handoff":  {module + "/proxy", module + "/proxy/store", module + "/proxy/upstream", module + "/proxy/downstream", module + "/proxy/command", module + "/proxy/security", module + "/proxy/pubsub", module + "/proxy/request", module + "/proxy/plan"},
	module + "/proxy/security": {module + "/proxy", module + "/proxy/store", module + "/proxy/upstream", module + "/proxy/downstream", module + "/proxy/command", module + "/proxy/plan", module + "/proxy/pubsub", module + "/proxy/request"},
	// The store: the data dir, no network and no other component.
	module + "/proxy/store": {"net", "crypto/tls", module + "/proxy", module + "/proxy/upstream", module + "/proxy/downstream",
		module + "/proxy/command", module + "/proxy/security", module + "/proxy/pubsub", module + "/proxy/request", module + "/proxy/handoff", module + "/proxy/vocab", module + "/proxy/plan"},
	// The two sides of the relay know each other only through the
	// interfaces each declares; neither knows the command surface.
	module + "/proxy/upstream":   {module + "/proxy", module + "/proxy/downstream", module + "/proxy/command"},
	module + "/proxy/downstream": {module + "/proxy", module + "/proxy/upstream", module + "/proxy/command"},
	// The command surface renders status values and hands connections to
	// an interface it declares: it depends on no other component.
	module + "/proxy/command": {module + "/proxy", module + "/proxy/upstream", module + "/proxy/store", module + "/proxy/downstream"},
}

// pureImports: what a package's own code may not import (its
// dependencies may: the planner reads snapshot.Info, which has a time).
var pureImports = map[string][]string{
	// The sync planner is pure: no I/O, no clock, no logging.
	module + "/proxy/plan": {"net", "os", "time", "log/slog"},
}

// banned reports whether imp is what rule names.
func banned(imp, rule string) bool {
	if prefix, ok := strings.CutSuffix(rule, "/..."); ok {
		return strings.HasPrefix(imp, prefix+"/")
	}
	return imp == rule
}

// TestImportLayers checks the rules above, and that no package under
// proxy/ imports the proxy root: that is the wiring, above them all.
func TestImportLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := map[string]bool{}
	for {
		var pkg struct {
			ImportPath string
			Imports    []string
			Deps       []string
		}
		if err := dec.Decode(&pkg); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen[pkg.ImportPath] = true
		for _, imp := range pkg.Imports {
			for _, rule := range pureImports[pkg.ImportPath] {
				if banned(imp, rule) {
					t.Errorf("%s imports %s, which it may not (%s)", pkg.ImportPath, imp, rule)
				}
			}
		}
		for _, imp := range pkg.Deps {
			for _, rule := range layers[pkg.ImportPath] {
				if banned(imp, rule) {
					t.Errorf("%s depends on %s, which its layer forbids (%s)", pkg.ImportPath, imp, rule)
				}
			}
			if imp == module+"/proxy" && strings.HasPrefix(pkg.ImportPath, module+"/proxy/") {
				t.Errorf("%s imports the proxy root: a lower package must not know the wiring", pkg.ImportPath)
			}
		}
	}
	for pkg := range layers {
		if !seen[pkg] {
			t.Errorf("layer rule for %s, which does not exist", pkg)
		}
	}
}
