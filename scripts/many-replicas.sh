#!/usr/bin/env bash
# Many real replicas behind one replproxy holding a large backlog on disk:
# what replproxy's memory and the replicas' lag do. Not part of `make test`
# (it writes BACKLOG bytes to disk and runs REPLICAS redis-servers).
#
#   REPLICAS=50 BACKLOG_GB=10 LOAD_SECONDS=60 scripts/many-replicas.sh
#
# 1. origin and replproxy (--backlog-size BACKLOG_GB+2 GB) on loopback;
# 2. 1000-byte SETs over 1000 keys until the backlog holds BACKLOG_GB
#    (and replproxy full-synced only once);
# 3. a fresh snapshot (redis-cli --rdb through replproxy), so that joining
#    replicas start at the end of the backlog, not in its middle;
# 4. REPLICAS redis-servers --replicaof replproxy, then LOAD_SECONDS of
#    single SETs (redis-benchmark -c 1 -P 1), sampling every second:
#    replproxy's RSS and each replica's offset behind replproxy's;
# 5. every replica's DEBUG DIGEST against the origin's.
set -euo pipefail
replicas=${REPLICAS:-50}
backlog_gb=${BACKLOG_GB:-10}
load_seconds=${LOAD_SECONDS:-60}
bin=${REPLPROXY:-bin/replproxy}
for cmd in redis-server redis-cli redis-benchmark "$bin"; do
	command -v "$cmd" >/dev/null || { echo "many-replicas: $cmd not found (make build; apt-get install -y redis-server)" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/replproxy-many-XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
next_port=20000
take_port() {
	while ! port_free "$next_port"; do next_port=$((next_port + 1)); done
	port=$next_port
	next_port=$((next_port + 1))
}
cli() { redis-cli -p "$1" "${@:2}"; }
field() { cli "$1" info "$2" | tr -d '\r' | sed -n "s/^$3://p"; }
wait_until() { # seconds, what, command...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@"; do
		[ $SECONDS -lt $deadline ] || { echo "many-replicas: timed out waiting for $what" >&2; exit 1; }
		sleep 0.2
	done
}

take_port; origin=$port
mkdir -p "$work/origin"
redis-server --port "$origin" --bind 127.0.0.1 --dir "$work/origin" --save '' --appendonly no \
	--enable-debug-command yes --daemonize no --logfile "$work/origin/log" &
pids+=($!)
wait_until 10 "the origin" cli "$origin" ping 2>/dev/null

take_port; proxy=$port
"$bin" --upstream "127.0.0.1:$origin" --listen "127.0.0.1:$proxy" --data-dir "$work/proxy" \
	--backlog-size "$((backlog_gb + 2))gb" --rdb-only-max-age 1s --log-format text 2>"$work/proxy.log" &
proxy_pid=$!
pids+=($proxy_pid)
link_up() { [ "$(field "$proxy" replication master_link_status 2>/dev/null)" = up ]; }
wait_until 60 "replproxy's upstream link" link_up

echo "filling the backlog to ${backlog_gb} GB"
target=$((backlog_gb << 30))
while :; do
	histlen=$(field "$proxy" replication repl_backlog_histlen)
	[ "$histlen" -lt "$target" ] || break
	# About 100 MB/s here: below what replproxy ingests on a small machine
	# (each byte goes to the page cache), so the origin never cuts it at
	# its output-buffer limit; the resync that follows resets the backlog.
	redis-benchmark -p "$origin" -t set -d 1000 -r 1000 -P 4 -c 2 -n 1000000 -q >/dev/null
	resyncs=$(grep -c 'msg="upstream full resync"' "$work/proxy.log" || true)
	[ "$resyncs" -le 1 ] || { echo "many-replicas: replproxy full-resynced $resyncs times: the load outran its disk" >&2; exit 1; }
done
caught_up() { [ "$(field "$proxy" replication master_repl_offset)" = "$(field "$origin" replication master_repl_offset)" ]; }
wait_until 120 "replproxy to catch up with the origin" caught_up
echo "backlog: $(du -sb "$work/proxy" | cut -f1) bytes on disk, histlen $(field "$proxy" replication repl_backlog_histlen)"

redis-cli -p "$proxy" --rdb "$work/fresh.rdb" >/dev/null 2>&1
echo "fresh snapshot taken; snapshot_age_seconds=$(field "$proxy" replproxy snapshot_age_seconds)"

ports=()
for i in $(seq 1 "$replicas"); do
	take_port
	ports+=("$port")
	mkdir -p "$work/r$i"
	redis-server --port "$port" --bind 127.0.0.1 --dir "$work/r$i" --save '' --appendonly no \
		--enable-debug-command yes --replicaof 127.0.0.1 "$proxy" --logfile "$work/r$i/log" &
	pids+=($!)
done
all_up() {
	local p
	for p in "${ports[@]}"; do
		[ "$(field "$p" replication master_link_status 2>/dev/null)" = up ] || return 1
	done
}
start=$SECONDS
wait_until 300 "$replicas replicas to sync" all_up
echo "$replicas replicas in sync after $((SECONDS - start)) s"

cmds0=$(field "$origin" stats total_commands_processed)
redis-benchmark -p "$origin" -t set -d 100 -r 100000 -c 1 -P 1 -n 100000000 -q >/dev/null 2>&1 &
load=$!
worst=0
rss_max=0
samples=0
load_start=$SECONDS
while [ $((SECONDS - load_start)) -lt "$load_seconds" ]; do
	sleep 1
	rss=$(awk '/^VmRSS/ {print $2}' "/proc/$proxy_pid/status")
	[ "$rss" -le "$rss_max" ] || rss_max=$rss
	for p in "${ports[@]}"; do
		end=$(field "$proxy" replication master_repl_offset)
		off=$(field "$p" replication slave_repl_offset)
		behind=$((end - off))
		[ "$behind" -le "$worst" ] || worst=$behind
	done
	samples=$((samples + 1))
done
kill "$load"
wait "$load" 2>/dev/null || true
load_cmds=$(($(field "$origin" stats total_commands_processed) - cmds0))
load_secs=$((SECONDS - load_start))
origin_off=$(field "$origin" replication master_repl_offset)
in_sync() {
	local p
	for p in "${ports[@]}"; do
		[ "$(field "$p" replication slave_repl_offset)" = "$origin_off" ] || return 1
	done
}
wait_until 120 "every replica to reach the origin's offset" in_sync
want=$(cli "$origin" debug digest)
same=0
for p in "${ports[@]}"; do
	[ "$(cli "$p" debug digest)" != "$want" ] || same=$((same + 1))
done
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$proxy_pid/status")
echo "load: $load_cmds SETs in $load_secs s ($((load_cmds / load_secs))/s), $samples samples of all $replicas replicas"
echo "replproxy RSS: max sampled $((rss_max / 1024)) MB, VmHWM $((hwm / 1024)) MB"
echo "worst replica behind replproxy (its offset read just after replproxy's): $worst bytes"
echo "digests equal to the origin's: $same of $replicas"
echo "backlog on disk at the end: $(du -sb "$work/proxy" | cut -f1) bytes"
[ "$same" -eq "$replicas" ]
