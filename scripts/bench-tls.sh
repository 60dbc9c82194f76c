#!/usr/bin/env bash
# TLS benchmark: wsgate (one reactor) and Bun (Bun.serve with tls, scripts/bun-server.js) on
# the same loads in the same run, each server pinned to core 0 and the loadgen to core 1.
#
# usage: scripts/bench-tls.sh [SCENARIO...]
#   handshake-ecdsa  full TLS 1.3 handshakes + upgrade + close (connect mode), ECDSA P-256
#   handshake-rsa    the same with RSA 2048
#   echo             100 connections x 100 msg/s of 64 B, over wss and over ws
#   fanout-100       1,000 subscribers x 100 publishes/s, over wss and over ws
#   fanout-1k        1,000 subscribers x 1,000 publishes/s, over wss and over ws
#   idle             RSS per idle connection at 10,000, over wss and over ws
# env: WSGATE_IO=epoll|uring (default epoll), BENCH_SECS (measured seconds, default 8),
#      HS_RATE_ECDSA, HS_RATE_RSA (offered handshakes/s, default 400 and 150: keep them below
#      what the server core can do, or timed-out handshakes are counted as wasted CPU),
#      BUN (path to bun, default ~/.cache/wsgate-npm/node_modules/.bin/bun)
#
# Server CPU is the change in utime+stime (/proc/PID/stat) over the measured window, divided
# by what the loadgen completed in it (handshakes, echoes) or by the deliveries offered
# (subscribers x rate; the row says if any were lost). Results land in bench-results/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(handshake-ecdsa handshake-rsa echo fanout-100 fanout-1k idle)
io="${WSGATE_IO:-epoll}"
secs="${BENCH_SECS:-8}"
bun="${BUN:-$HOME/.cache/wsgate-npm/node_modules/.bin/bun}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
results="bench-results/$stamp-$(git rev-parse --short HEAD)-tls-$io"
mkdir -p "$results"
certs=$(mktemp -d)
source scripts/lib/common.sh
cleanup() { stop_pids; rm -rf "$certs"; }
trap cleanup EXIT

build_release

# Self-signed leaf certificates for localhost, one per key type (not kept).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$certs/ecdsa.key" -out "$certs/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$certs/rsa.key" -out "$certs/rsa.pem" 2>/dev/null


start_server() { # system name keytype
  local system=$1 name=$2 key=${3:-ecdsa}
  port=$(free_port)
  tls_port=$(free_port)
  case "$system" in
    wsgate)
      taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" --client-publish '*' \
        --idle-timeout 0s --max-connections 30000 --tls-listen "127.0.0.1:$tls_port" \
        --tls-certs "$certs/$key.pem:$certs/$key.key" >"$results/server-$system-$name.log" 2>&1 &
      ;;
    bun)
      taskset -c 0 "$bun" scripts/bun-server.js "$port" "$tls_port" "$certs/$key.pem" "$certs/$key.key" \
        >"$results/server-$system-$name.log" 2>&1 &
      ;;
  esac
  server=$!
  pids+=("$server")
  wait_healthy "$port"
}

# Bun does not exit on SIGINT when not on a terminal: TERM, then KILL after 2 s.
stop_server() {
  kill -INT "$server" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$server" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

url() { # transport path
  if [[ $1 == wss ]]; then echo "wss://localhost:$tls_port$2"; else echo "ws://127.0.0.1:$port$2"; fi
}

# Runs the loadgen on core 1 and samples the server's CPU: over the whole run for handshakes
# (warm-up 0: every connection counts), else over the steady window after connecting and
# warming up (per offered message: `per_s`). Prints one row.
measure() { # system name what per_s loadgen-args...
  local system=$1 name=$2 what=$3 per_s=$4; shift 4
  local c0 c1 t0 t1 load
  if [[ $what == handshakes ]]; then
    c0=$(cpu_ticks "$server"); t0=$(date +%s.%N)
    taskset -c 1 "$lg" "$@" --insecure --threads 1 --quiet --json "$results/$system-$name.json" \
      >"$results/$system-$name.txt" 2>&1 || true
    c1=$(cpu_ticks "$server"); t1=$(date +%s.%N)
  else
    taskset -c 1 "$lg" "$@" --insecure --threads 1 --quiet --warmup 3s --duration "${secs}s" \
      --drain 1s --json "$results/$system-$name.json" >"$results/$system-$name.txt" 2>&1 &
    load=$!
    pids+=("$load")
    sleep 4
    c0=$(cpu_ticks "$server"); t0=$(date +%s.%N)
    sleep $((secs - 1))
    c1=$(cpu_ticks "$server"); t1=$(date +%s.%N)
    wait "$load" || true
  fi
  python3 - "$results/$system-$name.json" "$system" "$name" "$what" "$c0" "$c1" "$t0" "$t1" "$tick" \
    "$per_s" <<'PY' | tee -a "$results/rows.txt"
import json, sys
path, system, name, what, c0, c1, t0, t1, tick, per_s = sys.argv[1:]
r = json.load(open(path))
cpu_s = (int(c1) - int(c0)) / int(tick)
wall = float(t1) - float(t0)
lat = r["latency_us"]
errors = sum(v for v in r["errors"].values())
if what == "handshakes":
    n = r["received"]
    row = f"{cpu_s * 1e6 / n if n else float('nan'):8.1f} µs/handshake   {n / r['duration_s']:6.0f}/s done"
else:
    n = float(per_s) * wall
    row = f"{cpu_s * 1e9 / n:8.0f} ns/{'message' if what == 'echo' else 'delivery'}"
    if "fanout" in r:
        row += f"  lost {r['fanout']['lost']}"
print(f"{system:6} {name:20} {row}  p50 {lat['p50']/1e3:6.2f} ms  p99 {lat['p99']/1e3:6.2f} ms  "
      f"server cpu {cpu_s:.2f} s / {wall:.1f} s  loadgen cpu {r['client']['cpu_pct']:.0f}%  errors {errors}")
PY
}

handshakes() { # keytype
  for system in wsgate bun; do
    start_server "$system" "handshake-$1" "$1"
    measure "$system" "handshake-$1" handshakes 0 connect --url "$(url wss /echo)" --rate "$2" \
      --hold 1ms --warmup 0s --duration "${secs}s" --drain 1s
    stop_server
  done
}

echo_run() {
  for system in wsgate bun; do
    start_server "$system" echo
    for t in ws wss; do
      measure "$system" "echo-$t" echo 10000 echo --url "$(url "$t" /echo)" --connections 100 \
        --rate 10000 --size 64
    done
    stop_server
  done
}

fanout_run() { # rate
  for system in wsgate bun; do
    start_server "$system" "fanout-$1"
    for t in ws wss; do
      measure "$system" "fanout-$1-$t" fanout $((1000 * $1)) fanout --url "$(url "$t" /ws)" \
        --subscribers 1000 --publishers 1 --rate "$1" --size 64 --connect-rate 20000
    done
    stop_server
  done
}

idle_run() {
  for system in wsgate bun; do
    for t in ws wss; do
      start_server "$system" "idle-$t"
      local before after
      before=$(rss_kb "$server")
      taskset -c 1 "$lg" fanout --url "$(url "$t" /ws)" --publishers 0 --subscribers 10000 --insecure \
        --threads 1 --connect-rate 5000 --connect-timeout 20s --warmup 1s --duration 12s --quiet \
        >"$results/$system-idle-$t.txt" 2>&1 &
      local load=$!
      pids+=("$load")
      # Connected, then idle past the drivers' 2 s without traffic (they give memory back).
      sleep 9
      after=$(rss_kb "$server")
      wait "$load" || true
      stop_server
      python3 -c "
b, a, n = $before, $after, 10000
print(f'$system idle-$t: 10,000 idle connections: RSS {b/1024:.1f} -> {a/1024:.1f} MiB, {(a-b)*1024/n:.0f} bytes per connection')
" | tee -a "$results/rows.txt"
    done
  done
}

echo "wsgate TLS bench, io=$io, $(nproc) cores, kernel $(uname -r), commit $(git rev-parse --short HEAD), bun $("$bun" --version), $stamp" \
  | tee "$results/rows.txt"
for s in "${scenarios[@]}"; do
  case "$s" in
    handshake-ecdsa) handshakes ecdsa "${HS_RATE_ECDSA:-400}" ;;
    handshake-rsa) handshakes rsa "${HS_RATE_RSA:-150}" ;;
    echo) echo_run ;;
    fanout-100) fanout_run 100 ;;
    fanout-1k) fanout_run 1000 ;;
    idle) idle_run ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
echo "results: $results"
