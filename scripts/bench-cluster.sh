#!/usr/bin/env bash
# Cluster benchmark: three wsgate nodes and one nats-server on this machine (all pinned
# to core 0), the loadgen on core 1. Publishers connect to node 1; subscribers are spread
# over the three nodes, so node 1's latency is same-node and nodes 2 and 3's cross-node.
#
# usage: scripts/bench-cluster.sh [latency|rate|all]
#   latency  10,000 subscribers over the nodes x 100 publishes/s: p50/p99 per node, plus RSS
#            per connection and CPU per delivery (nodes and nats-server together)
#   rate     30 subscribers over the nodes, publish rate raised until the cross-node p99
#            passes 50 ms or deliveries are lost: the highest rate that held
# env: BENCH_SECS (measured seconds, default 8), RUNS (repeats per point, default 3),
#      RATES (publish rates to try, ascending)
#
# The machine is shared and noisy: compare the same-node and cross-node columns of one run,
# not figures across runs. Results land in bench-results/<stamp>-cluster/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-all}"
secs="${BENCH_SECS:-8}"
runs="${RUNS:-3}"
results="bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$(git rev-parse --short HEAD)-cluster"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT
ulimit -n "$(ulimit -Hn)"

command -v nats-server >/dev/null || { echo "nats-server is needed (apt-get install nats-server)" >&2; exit 1; }
nice -n 10 cargo build --release -q -p wsgate -p wsgate-loadgen
bin=target/release

nats_port=24222
taskset -c 0 nats-server -a 127.0.0.1 -p $nats_port >"$results/nats.log" 2>&1 &
pids+=($!); nats_pid=$!
ports=(28081 28082 28083)
node_pids=()
for i in 0 1 2; do
  taskset -c 0 $bin/wsgate serve --listen 127.0.0.1:${ports[$i]} --threads 1 --pin false \
    --io epoll --client-publish '*' --max-connections 12000 \
    --cluster-urls nats://127.0.0.1:$nats_port --cluster-name node$((i + 1)) \
    >"$results/node$((i + 1)).log" 2>&1 &
  pids+=($!); node_pids+=($!)
done
for p in "${ports[@]}"; do
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$p/healthz" | grep -q "cluster: connected" && break
    sleep 0.1
  done
done
urls=(--url ws://127.0.0.1:${ports[0]}/ws --url ws://127.0.0.1:${ports[1]}/ws --url ws://127.0.0.1:${ports[2]}/ws)

cpu_ticks() { # utime+stime of the given pids, in clock ticks
  local sum=0
  for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $sum
}
rss_kib() { local sum=0; for p in "$@"; do sum=$((sum + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $sum; }

# One loadgen run; prints "p50_same p99_same p50_cross p99_cross lost deliveries cpu_ns_per_delivery".
run() { # subscribers rate tag
  local subs=$1 rate=$2 tag=$3 json="$results/$3.json"
  local before; before=$(cpu_ticks "${node_pids[@]}" "$nats_pid")
  taskset -c 1 $bin/wsgate-loadgen fanout "${urls[@]}" --subscribers "$subs" --publishers 1 \
    --rate "$rate" --subscribe-op --duration "${secs}s" --warmup 3s --drain 2s --threads 1 \
    --connect-timeout 30s --quiet --json "$json" >"$results/$tag.txt"
  local after; after=$(cpu_ticks "${node_pids[@]}" "$nats_pid")
  python3 - "$json" $((after - before)) "$tick" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
f = s["fanout"]
per = f["per_url"]
same = per[0]["latency_us"]
cross = [u["latency_us"] for u in per[1:]]
# Cross-node: the worse of the two remote nodes.
p50c = max(c["p50"] for c in cross); p99c = max(c["p99"] for c in cross)
# CPU over the whole run (warm-up and drain included) per delivery of the window: an upper bound.
ns = int(sys.argv[2]) / int(sys.argv[3]) * 1e9 / max(f["deliveries"], 1)
print(f'{same["p50"]:.0f} {same["p99"]:.0f} {p50c:.0f} {p99c:.0f} {f["lost"]} {f["deliveries"]} {ns:.0f}')
PY
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [[ $what == latency || $what == all ]]; then
  echo "== latency: 10,000 subscribers over 3 nodes x 100 publishes/s, $runs runs of ${secs}s"
  idle=$(rss_kib "${node_pids[@]}")
  : >"$results/latency.rows"
  for r in $(seq "$runs"); do
    row=$(run 10000 100 "latency-$r")
    echo "run $r: same p50/p99 cross p50/p99 (us), lost, deliveries, ns/delivery: $row"
    echo "$row" >>"$results/latency.rows"
  done
  # RSS of the three nodes with the 10,000 connections just closed is not the loaded RSS:
  # sample it in a run of its own, mid-window.
  taskset -c 1 $bin/wsgate-loadgen fanout "${urls[@]}" --subscribers 10000 --publishers 1 \
    --rate 100 --subscribe-op --duration 6s --warmup 3s --threads 1 --quiet \
    --connect-timeout 30s >/dev/null &
  lg=$!
  sleep 6
  loaded=$(rss_kib "${node_pids[@]}")
  wait $lg
  for col in 1 2 3 4 7; do
    printf '%s ' "$(awk -v c=$col '{print $c}' "$results/latency.rows" | median)"
  done | awk '{printf "median: same-node p50 %s us p99 %s us; cross-node p50 %s us p99 %s us; %s ns CPU per delivery (nodes + nats)\n", $1, $2, $3, $4, $5}' | tee "$results/latency.txt"
  echo "RSS of the three nodes: idle $idle KiB, with 10,000 subscribers $loaded KiB: $(((loaded - idle) * 1024 / 10000)) B per connection" | tee -a "$results/latency.txt"
fi

if [[ $what == rate || $what == all ]]; then
  echo "== rate: 30 subscribers over 3 nodes, cross-node p99 < 50 ms, $runs runs of ${secs}s per rate"
  best=0
  for rate in ${RATES:-250 500 1000 2000 5000 10000 20000 40000}; do
    : >"$results/rate-$rate.rows"
    for r in $(seq "$runs"); do
      run 30 "$rate" "rate-$rate-$r" >>"$results/rate-$rate.rows"
    done
    p99=$(awk '{print $4}' "$results/rate-$rate.rows" | median)
    same=$(awk '{print $2}' "$results/rate-$rate.rows" | median)
    lost=$(awk '{print $5}' "$results/rate-$rate.rows" | median)
    echo "rate $rate/s: median p99 cross-node $p99 us, same-node $same us; lost $lost" | tee -a "$results/rate.txt"
    if ((p99 >= 50000 || lost > 0)); then break; fi
    best=$rate
  done
  echo "highest cross-node rate with p99 < 50 ms and no loss: $best publishes/s" | tee -a "$results/rate.txt"
fi
echo "results in $results"
