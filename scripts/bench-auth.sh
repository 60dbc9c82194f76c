#!/usr/bin/env bash
# Handshake cost of JWT on /ws (issue 12): one wsgate reactor pinned to core 0, the
# loadgen's connect mode pinned to core 1, upgrades with no token, an HS256 token and an
# ES256 token against the same server (auth optional, both keys configured), interleaved,
# 3 runs each. Prints per kind the medians of: handshakes/s achieved at the offered rate,
# server CPU µs per handshake (utime+stime over the whole run / connections opened) and
# the handshakes/s one core could do at that cost, and the handshake latency p50/p99.
# Then the memory a token costs: RSS growth per /ws connection with ~17,000 connections
# held open (5,000 new a second for 3.5 s), with no token and with the HS256 one, 3 runs.
#
# usage: scripts/bench-auth.sh       env: RATE (offered handshakes/s, default 3000),
#        BENCH_SECS (measured seconds per run, default 5), WSGATE_IO (default epoll)
# Needs python3 with PyJWT (pip install pyjwt cryptography) and openssl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rate="${RATE:-3000}"
secs="${BENCH_SECS:-5}"
io="${WSGATE_IO:-epoll}"
dir=$(mktemp -d)
source scripts/lib/common.sh
cleanup() { stop_pids; rm -rf "$dir"; }
trap cleanup EXIT

build_release

# Keys and tokens (valid for an hour, a typical claim set).
head -c 32 /dev/urandom | base64 >"$dir/secret"
openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$dir/es256-private.pem"
openssl ec -in "$dir/es256-private.pem" -pubout -out "$dir/es256.pem" 2>/dev/null
python3 - "$dir" <<'EOF'
import sys, time, jwt
d = sys.argv[1]
claims = {"sub": "bench", "exp": int(time.time()) + 3600,
          "subscribe": ["prices.*", "news"], "publish": ["chat.*"]}
secret = open(f"{d}/secret").read().strip()
open(f"{d}/hs256", "w").write(jwt.encode(claims, secret, algorithm="HS256"))
open(f"{d}/es256", "w").write(jwt.encode(claims, open(f"{d}/es256-private.pem").read(), algorithm="ES256"))
EOF

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" \
    --jwt-secret-file "$dir/secret" --jwt-public-keys "$dir/es256.pem" >"$dir/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
    sleep 0.05
done

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(uname -r) io=$io rate=$rate/s ${secs}s x3"
for run in 1 2 3; do
    for kind in none hs256 es256; do
        token=()
        [[ $kind != none ]] && token=(--token-file "$dir/$kind")
        before=$(awk '{print $14 + $15}' "/proc/$server/stat")
        taskset -c 1 "$lg" connect --url "ws://127.0.0.1:$port/ws" --rate "$rate" --hold 10ms \
            --duration "${secs}s" --warmup 1s --drain 1s --threads 1 \
            --source 127.0.0.2-127.0.0.40 -q --json "$dir/$kind-$run.json" "${token[@]}" >/dev/null
        after=$(awk '{print $14 + $15}' "/proc/$server/stat")
        echo "$kind $run $((after - before))" >>"$dir/cpu"
    done
done

python3 - "$dir" "$tick" <<'EOF'
import json, statistics, sys
d, tick = sys.argv[1], int(sys.argv[2])
cpu = {}
for line in open(f"{d}/cpu"):
    kind, run, ticks = line.split()
    cpu[(kind, run)] = int(ticks)
print(f"{'token':6} {'hs/s':>8} {'cpu us/hs':>10} {'hs/s/core':>10} {'p50 us':>8} {'p99 us':>8} {'errors':>6}")
for kind in ["none", "hs256", "es256"]:
    rows = []
    for run in "123":
        j = json.load(open(f"{d}/{kind}-{run}.json"))
        us = cpu[(kind, run)] * 1e6 / tick / j["connections"]
        lat = j["latency_us"]
        rows.append((j["rate_per_s"], us, 1e6 / us, lat["p50"], lat["p99"], sum(j["errors"].values())))
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"{kind:6} {med[0]:8.0f} {med[1]:10.1f} {med[2]:10.0f} {med[3]:8.0f} {med[4]:8.0f} {max(r[5] for r in rows):6}")
EOF

# Memory: a fresh server per run, RSS growth over the connections held open.
for run in 1 2 3; do
    for kind in none hs256; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        taskset -c 0 "$gw" serve --listen "127.0.0.1:$port" --threads 1 --io "$io" \
            --jwt-secret-file "$dir/secret" >/dev/null 2>&1 &
        srv=$!
        for _ in $(seq 100); do
            python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
            sleep 0.05
        done
        base=$(awk '/^VmRSS/ {print $2}' "/proc/$srv/status")
        token=()
        [[ $kind != none ]] && token=(--token-file "$dir/$kind")
        taskset -c 1 "$lg" connect --url "ws://127.0.0.1:$port/ws" --rate 5000 --hold 30s \
            --duration 4s --warmup 0s --drain 0s --threads 1 --source 127.0.0.2-127.0.0.20 -q \
            "${token[@]}" >/dev/null 2>&1 &
        load=$!
        sleep 3.5
        open=$(curl -s "127.0.0.1:$port/metrics" | awk '/^wsgate_connections\{/ {s += $2} END {print s}')
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$srv/status")
        echo "$kind $(( (rss - base) * 1024 / open ))" >>"$dir/rss"
        kill "$load" "$srv" 2>/dev/null || true
        wait "$load" "$srv" 2>/dev/null || true
    done
done
python3 - "$dir" <<'EOF'
import statistics, sys
rows = {}
for line in open(f"{sys.argv[1]}/rss"):
    kind, b = line.split()
    rows.setdefault(kind, []).append(int(b))
for kind, bs in rows.items():
    print(f"rss per connection, {kind:5}: median {statistics.median(bs):.0f} B  (runs {bs})")
EOF
