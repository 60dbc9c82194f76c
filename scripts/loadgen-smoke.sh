#!/usr/bin/env bash
# CI smoke run of the bundled load generator against a real wsgate, at a tiny scale:
# fan-out over /ws and echo, each for 2 s, checking the JSON summaries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --quiet --workspace --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out="$(mktemp -d)"
./target/debug/wsgate serve --listen "127.0.0.1:$port" --client-publish '*' >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done

lg=./target/debug/wsgate-loadgen
$lg fanout --url "ws://127.0.0.1:$port/ws" --subscribers 50 --publishers 2 --rate 200 \
  --duration 2s --warmup 500ms --quiet --json "$out/fanout.json" --hgrm "$out/fanout.hgrm"
$lg echo --url "ws://127.0.0.1:$port/echo" --connections 10 --duration 2s --warmup 500ms \
  --quiet --json "$out/echo.json"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
f = json.load(open(f"{out}/fanout.json"))
for key in ("mode", "url", "duration_s", "connections", "sent", "received", "rate_per_s",
            "latency_us", "errors", "fanout", "client"):
    assert key in f, f"fanout.json lacks {key}"
for q in ("p50", "p90", "p99", "p999", "p9999", "max", "mean", "count"):
    assert q in f["latency_us"], f"latency_us lacks {q}"
fo = f["fanout"]
assert fo["deliveries"] > 0 and fo["deliveries"] == fo["expected"], fo
assert fo["lost"] == 0 and fo["duplicates"] == 0 and fo["reordered"] == 0, fo
assert sum(f["errors"].values()) == 0, f["errors"]
e = json.load(open(f"{out}/echo.json"))
assert e["received"] > 0 and sum(e["errors"].values()) == 0, e
hgrm = open(f"{out}/fanout.hgrm").read()
assert "Value" in hgrm and "#[Max" in hgrm, "hgrm format"
print(f"loadgen smoke: fanout {fo['deliveries']} deliveries, p99 {f['latency_us']['p99']} us; "
      f"echo {e['received']} messages, p99 {e['latency_us']['p99']} us")
PY
