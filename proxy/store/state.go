package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

const stateVersion = 1

// persisted is the state file: which history the data dir holds and which
// snapshot and backlog belong to it. The backlog's end offset is not stored:
// the backlog itself is the only source of truth for it.
type persisted struct {
	Version    int            `json:"version"`
	History    psync.History  `json:"history"`
	Snapshot   *snapshot.Info `json:"snapshot,omitempty"`
	BacklogTag string         `json:"backlog_tag,omitempty"`
}

func loadState(path string) (persisted, error) {
	var st persisted
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse state %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return st, fmt.Errorf("state %s has version %d, want %d", path, st.Version, stateVersion)
	}
	return st, nil
}

// saveState replaces the state file atomically.
func saveState(path string, st persisted) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), nil); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// streamValidPrefix is the backlog's recovery check: the length of the
// longest prefix made of complete, well-formed commands. A segment always
// starts at a command boundary.
func ValidStreamPrefix(r io.Reader) (int64, error) {
	var sc psync.Scanner
	var last, pos int64
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			serr := sc.Scan(buf[:n], func(end int, _ *psync.Command) { last = pos + int64(end) })
			if serr != nil {
				return last, nil
			}
			pos += int64(n)
		}
		if err == io.EOF {
			return last, nil
		}
		if err != nil {
			return 0, err
		}
	}
}
