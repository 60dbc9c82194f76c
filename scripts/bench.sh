#!/usr/bin/env bash
# Fan-out benchmark: wsgate (one reactor, pinned to core 0) against the bundled loadgen
# (pinned to core 1), 64-byte messages. For each scenario prints deliveries/s, server CPU
# ns per delivery, latency percentiles and server RSS; results land in bench-results/.
#
# usage: scripts/bench.sh [SCENARIO...]
#   fanout-1k       1,000 subscribers x 1,000 publishes/s   (1 M deliveries/s offered)
#   fanout-max      1,000 subscribers x 5,000 publishes/s   (5 M/s offered: finds the ceiling)
#   fanout-10k-10   10,000 subscribers x 10/s, and a bare write loop over 10,000 sockets
#   fanout-10k-100  10,000 subscribers x 100/s
#   idle-10k        RSS per idle subscribed connection at 10,000
# env: WSGATE_IO=epoll|uring (default epoll), BENCH_SECS (measured seconds, default 10),
#      WSGATE_ARGS (extra server flags, e.g. "--max-batch-delay 0" for no batching)
#
# CPU per delivery is measured between two scrapes in the steady state: the change in the
# server's utime+stime (/proc/PID/stat) over the change in wsgate_deliveries_total.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(fanout-1k fanout-max fanout-10k-10 fanout-10k-100 idle-10k)
io="${WSGATE_IO:-epoll}"
secs="${BENCH_SECS:-10}"
warm=3
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
results="bench-results/$stamp-$(git rev-parse --short HEAD)-$io"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT

build_release


start_gateway() {
  port=$(free_port)
  taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" --client-publish '*' \
    --idle-timeout 0s --max-connections 19000 ${WSGATE_ARGS:-} >"$results/server-$1.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_healthy "$port"
}

stop_server() { kill -INT "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }

# Runs the loadgen on core 1 and samples the server between warm-up and the end.
run_fanout() { # name subscribers rate [extra loadgen args...]
  local name=$1 subs=$2 rate=$3; shift 3
  start_gateway "$name"
  taskset -c 1 "$lg" fanout --url "ws://127.0.0.1:$port/ws" --subscribers "$subs" --publishers 1 \
    --rate "$rate" --size 64 --threads 1 --connect-rate 20000 --warmup "${warm}s" \
    --duration "${secs}s" --quiet --json "$results/$name.json" --hgrm "$results/$name.hgrm" "$@" \
    >"$results/$name.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  # Connected and warmed: wait for deliveries to flow, then sample over most of the window.
  for _ in $(seq 200); do (($(deliveries "$port") > 0)) && break; sleep 0.1; done
  sleep "$warm"
  local c0 d0 c1 d1
  c0=$(cpu_ticks "$server"); d0=$(deliveries "$port")
  sleep $((secs - 2))
  c1=$(cpu_ticks "$server"); d1=$(deliveries "$port")
  rss=$(rss_kb "$server")
  # The server's own publish-to-write latency, to tell it apart from the client's.
  curl -sf "http://127.0.0.1:$port/metrics" | awk '/^wsgate_publish_to_write_seconds\{/' >"$results/$name.server-latency"
  wait "$load" || true
  stop_server
  report "$name" "$c0" "$c1" "$d0" "$d1" "$rss" "$subs"
}

report() { # name c0 c1 d0 d1 rss_kb connections
  python3 - "$results" "$@" "$tick" <<'PY'
import json, sys
results, name, c0, c1, d0, d1, rss, conns, tick = sys.argv[1:]
c = json.load(open(f"{results}/{name}.json"))
dd = int(d1) - int(d0)
ns = (int(c1) - int(c0)) * 1e9 / int(tick) / dd if dd > 0 else float("nan")
lat = c["latency_us"]
row = {
    "scenario": name, "deliveries_per_s": round(c["rate_per_s"]), "server_ns_per_delivery": round(ns),
    "p50_ms": lat["p50"] / 1e3, "p99_ms": lat["p99"] / 1e3, "p999_ms": lat["p999"] / 1e3,
    "max_ms": lat["max"] / 1e3, "server_rss_mib": round(int(rss) / 1024, 1),
    "lost": c.get("fanout", {}).get("lost"), "loadgen_cpu_pct": c["client"]["cpu_pct"],
    "loadgen_saturated": c["client"]["saturated"],
}
try:
    for line in open(f"{results}/{name}.server-latency"):
        q = line.split('quantile="')[1].split('"')[0]
        row[f"server_p{q}_ms"] = float(line.split()[-1]) * 1e3
except (OSError, IndexError):
    pass
json.dump(row, open(f"{results}/{name}.row.json", "w"))
print(f"{name:16} {row['deliveries_per_s']:>10,}/s {row['server_ns_per_delivery']:>6} ns/delivery  "
      f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  p99.9 {row['p999_ms']:.2f} ms  "
      f"rss {row['server_rss_mib']} MiB  lost {row['lost']}  loadgen cpu {row['loadgen_cpu_pct']:.0f}%"
      + ("  (loadgen saturated)" if row["loadgen_saturated"] else "")
      + (f"  | server publish-to-write p50 {row['server_p0.5_ms']:.2f} ms p99 {row['server_p0.99_ms']:.2f} ms"
         if "server_p0.99_ms" in row else ""))
PY
}

baseline_10k() { # the same 10,000 sockets' floor: a bare loop writing one frame to each
  local name=baseline-10k-10
  port=$(free_port)
  taskset -c 0 "$lg" blast-server --listen "127.0.0.1:$port" --format delivery --size 64 --batch 1 \
    --rate 10 --duration "$((secs + warm + 15))s" >"$results/server-$name.log" 2>&1 &
  server=$!
  pids+=("$server")
  sleep 0.5
  local c0 c1
  taskset -c 1 "$lg" fanout --url "ws://127.0.0.1:$port/" --publishers 0 --subscribers 10000 \
    --threads 1 --connect-rate 20000 --warmup "${warm}s" --duration "${secs}s" --quiet \
    --json "$results/$name.json" --hgrm "$results/$name.hgrm" >"$results/$name.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  sleep $((warm + 2))
  c0=$(cpu_ticks "$server")
  sleep $((secs - 2))
  c1=$(cpu_ticks "$server")
  rss=$(rss_kb "$server")
  wait "$load" || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  # Deliveries in the CPU window: 10 rounds/s x 10,000 sockets.
  report "$name" "$c0" "$c1" 0 $(((secs - 2) * 10 * 10000)) "$rss" 10000
}

idle_10k() {
  local name=idle-10k
  start_gateway "$name"
  local before after
  before=$(rss_kb "$server")
  taskset -c 1 "$lg" fanout --url "ws://127.0.0.1:$port/ws" --publishers 0 --subscribers 10000 \
    --threads 1 --connect-rate 20000 --warmup 1s --duration 8s --quiet >"$results/$name.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  for _ in $(seq 100); do
    open=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^wsgate_connections/ {s += $2} END {print s + 0}')
    ((open >= 10001)) && break
    sleep 0.1
  done
  # Idle means idle: past the drivers' 2 s without traffic, after which they give back what
  # only a busy reactor needs (queues grown by the connect burst, io_uring's ring pages).
  sleep 3
  after=$(rss_kb "$server")
  wait "$load" || true
  stop_server
  python3 -c "
b, a, n = $before, $after, $open - 1
print(f'idle-10k         {n:,} idle subscribed connections: RSS {b/1024:.1f} -> {a/1024:.1f} MiB, {(a-b)*1024/n:.0f} bytes per connection')
" | tee "$results/$name.row.txt"
}

echo "wsgate fan-out bench, io=$io, server flags: ${WSGATE_ARGS:-none}, $(nproc) cores, kernel $(uname -r), commit $(git rev-parse --short HEAD), $stamp"
for s in "${scenarios[@]}"; do
  case "$s" in
    fanout-1k) run_fanout "$s" 1000 1000 ;;
    fanout-max) run_fanout "$s" 1000 5000 ;;
    fanout-10k-10) baseline_10k; run_fanout "$s" 10000 10 ;;
    fanout-10k-100) run_fanout "$s" 10000 100 ;;
    idle-10k) idle_10k ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
echo "results: $results"
