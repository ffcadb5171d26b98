#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 200000x, a count of
# inputs; a duration like 5s also works but, with Go 1.26, can end a clean
# run with a spurious "context deadline exceeded", Go issue 75804). The corpus under
# testdata/fuzz is replayed by plain `go test` as regression seeds.
set -euo pipefail
fuzztime=${FUZZTIME:-200000x}
targets=(
  "./psync FuzzScanner"
  "./psync FuzzParsePsyncReply"
  "./psync FuzzPayload"
  "./psync/snapshot FuzzParseHeader"
  "./psync/snapshot FuzzScanKeyspace"
  "./proxy/request FuzzCmdReader"
  "./proxy/upstream FuzzStreamPublishes"
  "./proxy/upstream FuzzSourceCheck"
  "./internal/acl FuzzParse"
)
for t in "${targets[@]}"; do
  set -- $t
  echo "fuzz $2 ($1) for $fuzztime"
  go test "$1" -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime"
done
