#!/usr/bin/env bash
# epoll against io_uring in one run: closed-loop echo with wsgate on core 0 (one reactor)
# and the bundled loadgen on core 1. For each scenario and driver prints messages/s, server
# CPU ns per message and p99, then the uring/epoll ratios. Results land in bench-results/.
#
# usage: scripts/bench-drivers.sh [SCENARIO...]
#   echo-100x33     100 connections x 33-byte messages (the loadgen's smallest: its stamp)
#   echo-500x1k     500 connections x 1 KiB messages
# env: BENCH_SECS  measured seconds per run (default 8)
#      ROUNDS      epoll/uring pairs per scenario, interleaved against drift (default 1)
#      BENCH_FANOUT=1  also run scripts/bench.sh fanout-1k fanout-10k-10 on each driver
#                  (the fan-out comparison; that script prints its own table)
#
# CPU per message: the change in the server's utime+stime (/proc/PID/stat) over the change
# in wsgate_messages_in_total, both sampled inside the loadgen's measured window.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(echo-100x33 echo-500x1k)
secs="${BENCH_SECS:-8}"
rounds="${ROUNDS:-1}"
warm=2
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
results="bench-results/$stamp-$(git rev-parse --short HEAD)-drivers"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT

build_release

messages() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^wsgate_messages_in_total/ {s += $2} END {print s + 0}'; }

run_echo() { # name io connections size
  local name=$1 io=$2 conns=$3 size=$4 port server load c0 c1 m0 m1
  port=$(free_port)
  taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" --idle-timeout 0s \
    >"$results/server-$name-$io.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_healthy "$port"
  grep -q "io $io" "$results/server-$name-$io.log" || { echo "server did not pick $io" >&2; exit 1; }
  taskset -c 1 "$lg" echo --url "ws://127.0.0.1:$port/echo" --connections "$conns" --size "$size" \
    --binary --threads 1 --warmup "${warm}s" --duration "${secs}s" --quiet \
    --json "$results/$name-$io.json" >"$results/$name-$io.txt" 2>&1 &
  load=$!
  pids+=("$load")
  # Sample inside the measured window: a second after the warm-up, to a second before its end.
  sleep $((warm + 1))
  c0=$(cpu_ticks "$server"); m0=$(messages "$port")
  sleep $((secs - 2))
  c1=$(cpu_ticks "$server"); m1=$(messages "$port")
  wait "$load"
  kill -INT "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  python3 - "$results" "$name" "$io" "$c0" "$c1" "$m0" "$m1" "$tick" <<'PY'
import json, sys
results, name, io, c0, c1, m0, m1, tick = sys.argv[1:]
c = json.load(open(f"{results}/{name}-{io}.json"))
dm = int(m1) - int(m0)
ns = (int(c1) - int(c0)) * 1e9 / int(tick) / dm if dm > 0 else float("nan")
row = {"scenario": name, "io": io, "msgs_per_s": c["rate_per_s"], "server_ns_per_msg": ns,
       "p50_us": c["latency_us"]["p50"], "p99_us": c["latency_us"]["p99"],
       "loadgen_saturated": c["client"]["saturated"]}
with open(f"{results}/rows.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
print(f"{name:12} {io:6} {row['msgs_per_s']:>10,.0f} msg/s {ns:>7.0f} ns/msg  "
      f"p50 {row['p50_us']} us  p99 {row['p99_us']} us"
      + ("  (loadgen saturated)" if row["loadgen_saturated"] else ""))
PY
}

echo "wsgate driver bench: echo closed loop, server core 0, loadgen core 1, ${secs}s x $rounds round(s)," \
  "$(nproc) cores, kernel $(uname -r), commit $(git rev-parse --short HEAD), $stamp"
for s in "${scenarios[@]}"; do
  case "$s" in
    echo-100x33) conns=100 size=33 ;;
    echo-500x1k) conns=500 size=1024 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
  for _ in $(seq "$rounds"); do
    run_echo "$s" epoll "$conns" "$size"
    run_echo "$s" uring "$conns" "$size"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/rows.jsonl")]
print("\nratios uring/epoll (medians over rounds): throughput >1 is better, CPU and p99 <1 are better")
for name in dict.fromkeys(r["scenario"] for r in rows):
    med = lambda io, k: statistics.median(r[k] for r in rows if r["scenario"] == name and r["io"] == io)
    t = med("uring", "msgs_per_s") / med("epoll", "msgs_per_s")
    c = med("uring", "server_ns_per_msg") / med("epoll", "server_ns_per_msg")
    p = med("uring", "p99_us") / med("epoll", "p99_us")
    print(f"{name:12} msg/s x{t:.2f}   CPU ns/msg x{c:.2f}   p99 x{p:.2f}")
PY

if [[ "${BENCH_FANOUT:-0}" == 1 ]]; then
  # Hook for the fan-out comparison (1,000 subscribers at 1 M deliveries/s; 10,000 x 10/s).
  for io in epoll uring; do WSGATE_IO=$io scripts/bench.sh fanout-1k fanout-10k-10; done
fi
echo "results: $results"
