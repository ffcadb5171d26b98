package snapshot

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/hdt3213/rdb/model"
	"github.com/hdt3213/rdb/parser"
)

// KeyStats counts the keys of one database by type.
type KeyStats struct {
	DB      int            `json:"db"`
	Keys    int64          `json:"keys"`
	Expires int64          `json:"expires"`
	ByType  map[string]int `json:"by_type"`
}

// Stats parses the whole snapshot and counts keys per database. It reads
// every value, so it is for inspection and tests, never the relay path.
func Stats(dir string, info *Info) ([]KeyStats, error) {
	f, err := os.Open(filepath.Join(dir, info.Name))
	if err != nil {
		return nil, fmt.Errorf("snapshot stats: %w", err)
	}
	defer f.Close()
	dbs := map[int]*KeyStats{}
	err = parser.NewDecoder(bufio.NewReaderSize(f, 1<<20)).Parse(func(o model.RedisObject) bool {
		s := dbs[o.GetDBIndex()]
		if s == nil {
			s = &KeyStats{DB: o.GetDBIndex(), ByType: map[string]int{}}
			dbs[o.GetDBIndex()] = s
		}
		s.Keys++
		if o.GetExpiration() != nil {
			s.Expires++
		}
		s.ByType[o.GetType()]++
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot stats: parse %s: %w", info.Name, err)
	}
	out := make([]KeyStats, 0, len(dbs))
	for _, s := range dbs {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DB < out[j].DB })
	return out, nil
}
