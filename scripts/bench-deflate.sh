#!/usr/bin/env bash
# permessage-deflate cost (issue 10): 1 KiB JSON-like messages, 1,000 subscribers x 1,000
# publishes/s, server on core 0 and the loadgen on core 1, three rounds of:
#   wsgate-off   wsgate, subscribers without deflate
#   wsgate-on    wsgate, subscribers with --deflate (the loadgen inflates each message once:
#                --inflate-once, see below)
#   bun-on       Bun's server.publish(topic, msg, compress=true), perMessageDeflate: true,
#                same loadgen with --deflate (raw dialect: every message is broadcast)
# and idle memory per connection with and without deflate (IDLE_CONNS subscribers, 5,000).
# Prints server CPU ns per delivery: utime+stime over the window / the deliveries that reached
# the clients in it, which are the bytes the clients' kernels acknowledged (ss: bytes_acked on
# the server's sockets) over one delivery's wire bytes as the loadgen read them. A server
# that falls behind (Bun past ~85,000 compressed deliveries/s here) is charged for what it
# delivered, not for what it was handed; the server's own count (wsgate_deliveries_total,
# which scripts/bun-broadcast.js imitates) is printed beside as a cross-check. Also wire
# bytes per delivery, p50/p99 (the loadgen's, in the window), and the medians. Results in
# bench-results/.
#
# usage: scripts/bench-deflate.sh   env: ROUNDS (3), BENCH_SECS (10), RATE (1000), WSGATE_IO (epoll),
#                                        RUNS ("wsgate-off wsgate-on bun-on"), WSGATE_ARGS,
#                                        IDLE (1: also the idle-memory runs), IDLE_CONNS (5000),
#                                        INFLATE_ONCE (1: the --deflate runs pass --inflate-once;
#                                          0: the loadgen inflates every delivery, up to ~300/s)
#   idle memory alone: ROUNDS=0 IDLE_CONNS=10000 scripts/bench-deflate.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds="${ROUNDS:-3}"
kinds=(${RUNS:-wsgate-off wsgate-on bun-on})
# Publishes per second: 1,000 is a million deliveries a second, which one loadgen thread
# reads, but inflates only with --inflate-once (one inflate per publish, not per delivery);
# inflating every delivery, it keeps up to about 300/s on this machine.
rate="${RATE:-1000}"
secs="${BENCH_SECS:-10}"
io="${WSGATE_IO:-epoll}"
warm=3
bun="${BUN:-$HOME/.cache/wsgate-npm/node_modules/.bin/bun}"
results="bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$(git rev-parse --short HEAD)-deflate"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT

build_release

start() { # kind
  port=$(free_port)
  if [[ $1 == bun ]]; then
    taskset -c 0 "$bun" scripts/bun-broadcast.js "$port" >"$results/server-$name.log" 2>&1 &
  else
    taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" --client-publish '*' \
      --idle-timeout 0s ${WSGATE_ARGS:-} >"$results/server-$name.log" 2>&1 &
  fi
  server=$!
  pids+=("$server")
  wait_healthy "$port"
}

run() { # name kind [loadgen args...]
  name=$1; local kind=$2; shift 2
  start "$kind"
  local url="ws://127.0.0.1:$port/ws" dialect=wsgate
  [[ $kind == bun ]] && { url="ws://127.0.0.1:$port/"; dialect=raw; }
  taskset -c 1 "$lg" fanout --url "$url" --dialect "$dialect" --subscribers 1000 --publishers 1 \
    --rate "$rate" --size 1024 --threads 1 --connect-rate 20000 --warmup "${warm}s" \
    --duration "${secs}s" --quiet --json "$results/$name.json" "$@" >"$results/$name.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  # Inside the loadgen's window: from a second after its warm-up to a second before its end.
  for _ in $(seq 150); do (($(established "$port") > 1000)) && break; sleep 0.1; done
  sleep $((warm + 1))
  local t0 t1 c0 c1 d0 d1 a0 a1
  # The kernel's figures first: a saturated server answers /metrics late, if at all.
  t0=$(date +%s%N); c0=$(cpu_ticks "$server"); a0=$(acked_bytes "$port"); d0=$(deliveries "$port" || true)
  sleep $((secs - 2))
  t1=$(date +%s%N); c1=$(cpu_ticks "$server"); a1=$(acked_bytes "$port"); d1=$(deliveries "$port" || true)
  wait "$load" || true
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
  python3 - "$results" "$name" "$c0" "$c1" "$d0" "$d1" "$a0" "$a1" "$tick" "$t0" "$t1" <<'PY'
import json, sys
results, name, c0, c1, d0, d1, a0, a1, tick, t0, t1 = sys.argv[1:]
window = (int(t1) - int(t0)) / 1e9
c = json.load(open(f"{results}/{name}.json"))
cpu_ns = (int(c1) - int(c0)) * 1e9 / int(tick)
# Deliveries that reached the clients in the window: the bytes their kernels acknowledged
# over the wire bytes of one message as the loadgen read them. A server that falls behind
# is charged for what it delivered, not for what it was handed.
wire = c["wire_bytes_in"] / max(c["messages_in"], 1)
delivered = (int(a1) - int(a0)) / wire
ns = cpu_ns / delivered if delivered > 0 else 0
# The server's own count over the same seconds (wsgate_deliveries_total; Bun's script counts
# what server.publish was handed): a cross-check while the server keeps up.
counted = int(d1) - int(d0)
row = {"run": name, "deliveries_per_s": round(delivered / window),
       "server_ns_per_delivery": round(ns),
       "server_cpu_pct": round(100 * cpu_ns / 1e9 / window),
       "counted_per_s": round(counted / window),
       "wire_bytes_per_delivery": round(wire),
       "payload_bytes_per_delivery": round(c["payload_bytes_in"] / max(c["messages_in"], 1)),
       "p50_ms": c["latency_us"]["p50"] / 1e3, "p99_ms": c["latency_us"]["p99"] / 1e3,
       "lost": c.get("fanout", {}).get("lost"), "loadgen_saturated": c["client"]["saturated"]}
json.dump(row, open(f"{results}/{name}.row.json", "w"))
print(f"{name:12} {row['deliveries_per_s']:>9,}/s (counted {row['counted_per_s']:,}/s) "
      f"{row['server_ns_per_delivery']:>6} ns/delivery (core {row['server_cpu_pct']} %) "
      f"wire {row['wire_bytes_per_delivery']:>5} B (payload {row['payload_bytes_per_delivery']} B) "
      f"p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms lost {row['lost']}"
      + ("  (loadgen saturated)" if row["loadgen_saturated"] else ""))
PY
}

idle() { # name [loadgen args...]: RSS per idle subscribed connection, IDLE_CONNS of them
  name=$1; shift
  local conns="${IDLE_CONNS:-5000}"
  start wsgate
  local before after open=0
  before=$(rss_kb "$server")
  taskset -c 1 "$lg" fanout --url "ws://127.0.0.1:$port/ws" --publishers 0 --subscribers "$conns" \
    --threads 1 --connect-rate 20000 --warmup 1s --duration 8s --quiet "$@" >"$results/$name.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  for _ in $(seq 100); do
    open=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^wsgate_connections/ {s += $2} END {print s + 0}')
    ((open >= conns + 1)) && break
    sleep 0.1
  done
  sleep 3
  after=$(rss_kb "$server")
  wait "$load" || true
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
  python3 -c "print(f'$name: {$open - 1:,} idle connections, {($after - $before) * 1024 / ($open - 1):.0f} bytes per connection')" |
    tee "$results/$name.row.txt"
}

once=""
[[ "${INFLATE_ONCE:-1}" == 1 ]] && once=--inflate-once
echo "deflate bench, io=$io, rate=$rate/s ${once:-(every delivery inflated)}, $(nproc) cores, kernel $(uname -r), commit $(git rev-parse --short HEAD), $("$bun" --version 2>/dev/null | sed 's/^/bun /')"
for r in $(seq "$rounds"); do
  for kind in "${kinds[@]}"; do
    case "$kind" in
      wsgate-off) run "$kind-$r" wsgate ;;
      wsgate-on) run "$kind-$r" wsgate --deflate $once ;;
      bun-on) run "$kind-$r" bun --deflate $once ;;
      *) echo "unknown run $kind" >&2; exit 2 ;;
    esac
  done
done
if [[ "${IDLE:-1}" == 1 ]]; then
  idle idle-plain
  idle idle-deflate --deflate
fi
python3 - "$results" <<'PY'
import glob, json, statistics, sys
rows = [json.load(open(f)) for f in glob.glob(f"{sys.argv[1]}/*.row.json")]
print("medians:")
for kind in ["wsgate-off", "wsgate-on", "bun-on"]:
    rs = [r for r in rows if r["run"].rsplit("-", 1)[0] == kind]
    if rs:
        med = {k: statistics.median(r[k] for r in rs) for k in
               ["deliveries_per_s", "server_ns_per_delivery", "wire_bytes_per_delivery", "p99_ms"]}
        print(f"  {kind:12} {med['deliveries_per_s']:>9,.0f}/s {med['server_ns_per_delivery']:>6.0f} ns/delivery "
              f"wire {med['wire_bytes_per_delivery']:.0f} B p99 {med['p99_ms']:.2f} ms")
PY
echo "results: $results"
