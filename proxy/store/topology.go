package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"
)

// A REPLICAOF (an operator, or Sentinel after a failover) is persisted in
// the data dir, so a restart follows the upstream it was pointed at, not
// the configured --upstream it started with. It stays in force until
// another REPLICAOF, or a start with a different --upstream than the one
// it was persisted with: then the configuration wins.

// persistedUpstream is the file's content.
type persistedUpstream struct {
	Upstream   string    `json:"upstream"`   // set by REPLICAOF
	Configured string    `json:"configured"` // --upstream when it was set
	At         time.Time `json:"at"`
}

// Upstream sources, as INFO names them.
const (
	UpstreamFromConfig    = "config"
	UpstreamFromReplicaof = "replicaof"
)

// LoadUpstream decides the upstream to start with and why.
func LoadUpstream(dataDir, configured string) (addr, source string, note error) {
	b, err := os.ReadFile(Layout{dataDir}.upstream())
	if errors.Is(err, os.ErrNotExist) {
		return configured, UpstreamFromConfig, nil
	}
	var pu persistedUpstream
	if err == nil {
		err = json.Unmarshal(b, &pu)
	}
	switch {
	case err != nil || pu.Upstream == "":
		return configured, UpstreamFromConfig, fmt.Errorf("%s unreadable, following --upstream: %v", Layout{dataDir}.upstream(), err)
	case pu.Configured != configured:
		_ = os.Remove(Layout{dataDir}.upstream())
		return configured, UpstreamFromConfig, fmt.Errorf("--upstream changed from %s to %s since REPLICAOF %s: the configuration wins", pu.Configured, configured, pu.Upstream)
	}
	return pu.Upstream, UpstreamFromReplicaof, nil
}

// PersistUpstream records a REPLICAOF.
func PersistUpstream(dataDir, addr, configured string, sync atomicfile.SyncFunc) error {
	b, err := json.Marshal(persistedUpstream{Upstream: addr, Configured: configured, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	return atomicfile.Write(Layout{dataDir}.upstream(), b, sync)
}
