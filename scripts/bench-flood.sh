#!/usr/bin/env bash
# A flooding client beside a well-behaved one (issue 12): does the rate limit keep the
# neighbour's latency? One wsgate reactor pinned to core 0 with `--message-rate` set; on
# core 1 a loadgen fan-out (SUBS subscribers, one publisher at RATE/s over /ws: the
# neighbour) alone, then the same with FLOODERS raw clients that send publishes as fast as
# TCP takes them and reconnect whenever the server closes them. Alternates the two ROUNDS
# times and prints, per case, the neighbour's median p50/p99/max, lost, and (flood) how
# many messages the server refused and how many flooders it closed.
#
# usage: scripts/bench-flood.sh   env: ROUNDS (3), BENCH_SECS (8), SUBS (100), RATE (100),
#        FLOODERS (4), MESSAGE_RATE (server --message-rate, 200), WSGATE_IO (epoll)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds="${ROUNDS:-3}"
secs="${BENCH_SECS:-8}"
subs="${SUBS:-100}"
rate="${RATE:-100}"
flooders="${FLOODERS:-4}"
message_rate="${MESSAGE_RATE:-200}"
io="${WSGATE_IO:-epoll}"
results="bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$(git rev-parse --short HEAD)-flood"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT
build_release

port=$(free_port)
taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" --client-publish '*' \
  --message-rate "$message_rate" >"$results/server.log" 2>&1 &
pids+=($!)
wait_healthy "$port"
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 ~ "^"m {s += $NF} END {print s + 0}'; }

# Publishes on /ws as fast as the socket takes them; reconnects when closed.
flood() {
  exec taskset -c 1 python3 - "$port" <<'PY'
import os, socket, struct, sys
port = int(sys.argv[1])
msg = b'{"op":"publish","topic":"flood","data":"' + b"x" * 200 + b'"}'
def frame():
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(msg))
    return b"\x81" + struct.pack("!BH", 0x80 | 126, len(msg)) + key + body
burst = frame() * 64
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        s.recv(4096)
        s.setblocking(True)
        while True:
            s.sendall(burst)
    except OSError:
        pass
PY
}

run() { # case round
  local name="$1-$2" fl=()
  if [[ $1 == flood ]]; then
    for _ in $(seq "$flooders"); do flood & fl+=($!); pids+=($!); done
  fi
  local r0 c0
  r0=$(metric wsgate_messages_rate_limited_total)
  c0=$(metric wsgate_rate_limit_closes_total)
  taskset -c 1 "$lg" fanout --url "ws://127.0.0.1:$port/ws" --subscribers "$subs" --publishers 1 \
    --rate "$rate" --size 64 --threads 1 --warmup 2s --duration "${secs}s" --quiet \
    --json "$results/$name.json" >"$results/$name.txt" 2>&1
  local r1 c1
  r1=$(metric wsgate_messages_rate_limited_total)
  c1=$(metric wsgate_rate_limit_closes_total)
  for p in "${fl[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  python3 - "$results/$name.json" "$1" "$((r1 - r0))" "$((c1 - c0))" >>"$results/rows.txt" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
l = f["latency_us"]
print(sys.argv[2], l["p50"], l["p99"], l["max"], f["fanout"]["lost"], sys.argv[3], sys.argv[4])
PY
}

for round in $(seq "$rounds"); do
  run alone "$round"
  run flood "$round"
done
python3 - "$results/rows.txt" "$flooders" "$message_rate" <<'PY' | tee "$results/summary.txt"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"neighbour: fan-out latency with and without {sys.argv[2]} flooders (server --message-rate {sys.argv[3]}), medians")
print(f"{'case':6} {'p50 us':>9} {'p99 us':>9} {'max us':>9} {'lost':>5} {'refused':>9} {'closed':>7}")
for case in ("alone", "flood"):
    r = [x for x in rows if x[0] == case]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    print(f"{case:6} {med(1):9.0f} {med(2):9.0f} {med(3):9.0f} {med(4):5.0f} {med(5):9.0f} {med(6):7.0f}")
PY
echo "results: $results"
