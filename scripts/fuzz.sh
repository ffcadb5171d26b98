#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 5s). The corpus under
# testdata/fuzz is replayed by plain `go test` as regression seeds.
set -euo pipefail
fuzztime=${FUZZTIME:-5s}
targets=(
  "./psync FuzzScanner"
  "./psync FuzzParsePsyncReply"
  "./psync FuzzPayload"
  "./psync/snapshot FuzzParseHeader"
  "./proxy FuzzCmdReader"
)
for t in "${targets[@]}"; do
  set -- $t
  echo "fuzz $2 ($1) for $fuzztime"
  go test "$1" -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime"
done
