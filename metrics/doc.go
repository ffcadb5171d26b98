package metrics

import (
	"fmt"
	"sort"
	"strings"
)

// CatalogTable is the markdown table of every metric, for the README.
func CatalogTable() string {
	seen := map[string]bool{}
	docs := append([]MetricDoc{}, catalog...)
	sort.SliceStable(docs, func(i, j int) bool { return docs[i].Name < docs[j].Name })
	var b strings.Builder
	b.WriteString("| metric | type | labels | meaning |\n|---|---|---|---|\n")
	for _, d := range docs {
		if seen[d.Name] {
			continue
		}
		seen[d.Name] = true
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", d.Name, d.Type, strings.Join(d.Labels, ", "), d.Help)
	}
	return b.String()
}
