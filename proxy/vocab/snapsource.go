package vocab

import (
	"github.com/replproxy/replproxy/psync/snapshot"
)

// SnapshotSource names where a snapshot came from; snapshots kept from before
// sources were recorded came from the upstream.
func SnapshotSource(s *snapshot.Info) string {
	switch {
	case s == nil:
		return "none"
	case s.Source == "":
		return SnapFromUpstream
	}
	return s.Source
}
