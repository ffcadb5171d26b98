#!/usr/bin/env bash
# `make bench`: Go micro-benchmarks, then every replbench scenario at a
# small size (a few minutes on 2 cores). Scale up with replbench's flags.
set -euo pipefail
out=${OUT:-out/bench}
go test -run '^$' -bench . -benchmem ./psync/...
./bin/replbench fanout  --dataset 64mb --replicas 5 --out "$out"
./bin/replbench relay   --replicas 3 --duration 10s --rate 20000 --out "$out"
./bin/replbench outage  --dataset 16mb --outages 1s,5s --out "$out"
./bin/replbench restart --dataset 16mb --replicas 3 --out "$out"
./bin/replbench ceiling --dataset 256mb --replicas 4 --out "$out"
echo "results: $out/*.md, *.json, *.svg"
