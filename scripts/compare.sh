#!/usr/bin/env bash
# wsgate against Bun's pub/sub (Bun.serve + server.publish, benches/peers/bun-pubsub.js) in
# one run: each server in turn on core 0 (wsgate with one reactor), the bundled loadgen on
# core 1, the same scenarios, 64-byte messages, one publisher over /ws. Prints one table of
# medians over the rounds; rows and loadgen JSON land in bench-results/.
#
# usage: scripts/compare.sh [SCENARIO...]
#   1k-1000   1,000 subscribers x 1,000 publishes/s
#   10k-100   10,000 subscribers x 100/s
#   10k-10    10,000 subscribers x 10/s, and the bare write loop (`blast-server --rate`)
#   1k-rise   1,000 subscribers, publish rate rising through RISE_RATES until p99 >= 50 ms
#             or a delivery is lost: the highest rate that passed
#   1k-floor  the floor under any server at 1,000 x 1,000/s: the bare write loop
#             (`blast-server`) writing F frames to each of 1,000 sockets in one write, 1,000/F
#             times a second, for each F in FLOOR_BATCHES (rows 1k-floor-F): the kernel's cost
#             per delivery at F frames per write, with next to no user-space work
# env: ROUNDS (default 3; medians), SECS (measured seconds, default 8; 4 for 1k-rise),
#      WSGATE_IO (epoll|uring, default epoll), WSGATE_ARGS (extra server flags),
#      RISE_RATES (default "1000 2000 3000 4000 6000 8000 12000 16000"),
#      FLOOR_BATCHES (default "1 2 4 8 16 32 64"),
#      BASELINE (another wsgate binary, e.g. one built from an earlier commit: run as
#      system "baseline" right after wsgate in 1k-1000, 10k-100 and 10k-10, for a
#      before/after in one run)
#
# Every run is bounded (connect + 2 s warm-up + SECS + 1 s drain, under 15 s); the default
# set takes about 8 minutes. CPU per delivery = the server's utime+stime (/proc/PID/stat)
# between two samples inside the loadgen's window over the deliveries the loadgen counted
# in that time (the same method for both servers). fr/seg = deliveries over the data
# segments sent on the machine in the same seconds (TcpExt TCPOrigDataSent), less one a
# publish: frames per write as the kernel saw them, for Bun too (uWS gathers a loop
# iteration's publishes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(1k-1000 10k-100 10k-10 1k-rise)
rounds="${ROUNDS:-3}"
secs="${SECS:-8}"
io="${WSGATE_IO:-epoll}"
rise_rates=(${RISE_RATES:-1000 2000 3000 4000 6000 8000 12000 16000})
floor_batches=(${FLOOR_BATCHES:-1 2 4 8 16 32 64})
warm=2
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
results="bench-results/$stamp-$(git rev-parse --short HEAD)-compare"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT

npm_dir="$HOME/.cache/wsgate-npm"
bun="$npm_dir/node_modules/.bin/bun"
if [[ ! -x "$bun" ]]; then
  npm install --prefix "$npm_dir" --silent --no-audit --no-fund bun >/dev/null
fi
build_release
wsgates=(wsgate)
if [[ -n ${BASELINE:-} ]]; then
  [[ -x $BASELINE ]] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 2; }
  wsgates+=(baseline)
fi

wait_listening() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "server on $1 did not start" >&2
  exit 1
}
# A failed read prints 0 (the row then has no frames per write) rather than end the run
# under `set -e -o pipefail`.
metric() { { curl -sf -m 5 "http://127.0.0.1:$1/metrics" || true; } | awk -v m="$2" '$1 ~ "^"m {s += $2} END {print s + 0}'; }

# Each server and the loadgen run in a session of their own: with autogroup scheduling a
# session shares one CPU weight across its processes, so a server in the loadgen's session
# would get half the share a server in its own session gets on a busy machine. (And Bun
# passes a SIGINT on to its process group, this script included.)
start_server() { # system port log [rounds a second, for bare; frames per write: $batch, default 1]
  case "$1" in
    wsgate | baseline) setsid taskset -c 0 "$([[ $1 == wsgate ]] && echo "$gw" || echo "$BASELINE")" serve --listen "127.0.0.1:$2" --threads 1 --io "$io" \
      --client-publish '*' --idle-timeout 0s --max-connections 19000 ${WSGATE_ARGS:-} >"$3" 2>&1 & ;;
    bun) PORT="$2" setsid taskset -c 0 "$bun" benches/peers/bun-pubsub.js >"$3" 2>&1 & ;;
    bare) setsid taskset -c 0 "$lg" blast-server --listen "127.0.0.1:$2" --format delivery --size 64 \
      --batch "${batch:-1}" --rate "$4" --duration 60s >"$3" 2>&1 & ;;
  esac
  server=$!
  pids+=("$server")
  wait_listening "$2"
}

# One run: prints nothing, appends a row to rows.jsonl.
run() { # system scenario subs rate secs
  local system=$1 scenario=$2 subs=$3 rate=$4 secs=$5 port name load c0 c1 t0 t1 w0 w1 d0 d1 s0 s1 conns
  port=$(free_port)
  name="$scenario-$rate-$system-$(date +%s%N)"
  start_server "$system" "$port" "$results/server-$name.log" "$rate"
  local url="ws://127.0.0.1:$port/ws" pubs=(--publishers 1 --rate "$rate")
  conns=$((subs + 1))
  if [[ $system == bare ]]; then url="ws://127.0.0.1:$port/"; pubs=(--publishers 0); conns=$subs; fi
  setsid taskset -c 1 "$lg" fanout --url "$url" --subscribers "$subs" "${pubs[@]}" --size 64 \
    --threads 1 --connect-rate 20000 --warmup "${warm}s" --duration "${secs}s" --drain 1s \
    --quiet --json "$results/$name.json" >"$results/$name.txt" 2>&1 &
  load=$!
  pids+=("$load")
  for _ in $(seq 150); do (($(established "$port") >= conns)) && break; sleep 0.1; done
  # Inside the window: from a second after the warm-up to a second before its end.
  sleep $((warm + 1))
  c0=$(cpu_ticks "$server")
  t0=$(date +%s%N)
  s0=$(orig_data_sent)
  [[ $system != bun && $system != bare ]] && { w0=$(metric "$port" wsgate_writes_total); d0=$(metric "$port" wsgate_deliveries_total); }
  sleep $((secs - 2))
  c1=$(cpu_ticks "$server")
  t1=$(date +%s%N)
  s1=$(orig_data_sent)
  [[ $system != bun && $system != bare ]] && { w1=$(metric "$port" wsgate_writes_total); d1=$(metric "$port" wsgate_deliveries_total); }
  wait "$load" || true
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  python3 - "$results" "$name" "$system" "$scenario" "$rate" "$c0" "$c1" "$tick" "$(((t1 - t0) / 1000))" \
    "${w0:-0}" "${w1:-0}" "${d0:-0}" "${d1:-0}" "$s0" "$s1" <<'PY'
import json, sys
results, name, system, scenario, rate, c0, c1, tick, span_us, w0, w1, d0, d1, s0, s1 = sys.argv[1:]
rate = json.loads(rate)  # publishes (or bare rounds) a second: 1000, or 15.625 for 1k-floor-64
# The seconds between the two CPU samples as they were taken: the segment count, and for
# wsgate two reads of /metrics, come between them, tens of ms that a fixed span of
# SECS - 2 charged as CPU (to wsgate more than to Bun, and most in 1k-rise's 2 s spans).
span = int(span_us) / 1e6
try:
    c = json.load(open(f"{results}/{name}.json"))
except (OSError, ValueError):
    c = None
row = {"system": system, "scenario": scenario, "rate": rate, "ok": c is not None}
if c:
    cpu_s = (int(c1) - int(c0)) / int(tick)
    per_s = c["rate_per_s"]
    dw = int(w1) - int(w0)
    row.update({
        "deliveries_per_s": per_s,
        "server_cpu_pct": 100 * cpu_s / span,
        "ns_per_delivery": cpu_s * 1e9 / (per_s * span) if per_s else float("nan"),
        "p50_ms": c["latency_us"]["p50"] / 1e3, "p99_ms": c["latency_us"]["p99"] / 1e3,
        "p999_ms": c["latency_us"]["p999"] / 1e3,
        "lost": c.get("fanout", {}).get("lost", 0) + sum(c["errors"].values()),
        "loadgen_cpu_pct": c["client"]["cpu_pct"], "loadgen_saturated": c["client"]["saturated"],
        "frames_per_write": (int(d1) - int(d0)) / dw if dw > 0 else None,
        # Kernel-counted, for every server: deliveries over the data segments sent, less
        # the publisher's (one a publish at most; none for the bare loop).
        "frames_per_segment": per_s * span / segs if (segs := int(s1) - int(s0) - (0 if system == "bare" else rate * span)) > 0 else None,
    })
with open(f"{results}/rows.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
PY
}

passes() { # the last row: p99 < 50 ms and nothing lost
  tail -n1 "$results/rows.jsonl" | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if r["ok"] and r["p99_ms"] < 50 and r["lost"] == 0 else 1)'
}

echo "wsgate ($io${WSGATE_ARGS:+, $WSGATE_ARGS})${BASELINE:+ and baseline $BASELINE} vs Bun $("$bun" --version): server core 0, loadgen core 1," \
  "$rounds round(s), ${secs}s windows, $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD), $stamp"
start=$SECONDS
for round in $(seq "$rounds"); do
  for s in "${scenarios[@]}"; do
    case "$s" in
      1k-1000) for sys in "${wsgates[@]}" bun; do run "$sys" "$s" 1000 1000 "$secs"; done ;;
      10k-100) for sys in "${wsgates[@]}" bun; do run "$sys" "$s" 10000 100 "$secs"; done ;;
      10k-10) for sys in "${wsgates[@]}" bun bare; do run "$sys" "$s" 10000 10 "$secs"; done ;;
      1k-rise)
        for sys in wsgate bun; do
          for r in "${rise_rates[@]}"; do
            run "$sys" "$s" 1000 "$r" 4
            passes || break
          done
        done ;;
      1k-floor)
        for f in "${floor_batches[@]}"; do
          batch=$f run bare "$s-$f" 1000 "$(awk -v f="$f" 'BEGIN { print 1000 / f }')" "$secs"
        done ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
  echo "round $round done after $((SECONDS - start)) s" >&2
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/rows.jsonl")]
med = lambda xs: statistics.median(xs) if xs else float("nan")
def fmt(v, spec):
    return "-" if v is None or v != v else format(v, spec)
print(f"\n{'scenario':10} {'server':7} {'deliv/s':>10} {'CPU ns/deliv':>12} {'srv CPU':>7} "
      f"{'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'lost':>5} {'frames/wr':>9} {'fr/seg':>6} {'loadgen':>8}")
for scenario in dict.fromkeys(r["scenario"] for r in rows if r["scenario"] != "1k-rise"):
    for system in ("wsgate", "baseline", "bun", "bare"):
        rs = [r for r in rows if r["scenario"] == scenario and r["system"] == system and r["ok"]]
        if not rs:
            continue
        m = lambda k: med([r[k] for r in rs if r.get(k) is not None])
        sat = sum(r["loadgen_saturated"] for r in rs)
        print(f"{scenario:10} {system:8} {m('deliveries_per_s'):>10,.0f} {fmt(m('ns_per_delivery'), '>12,.0f')} "
              f"{m('server_cpu_pct'):>6.0f}% {m('p50_ms'):>7.2f} {m('p99_ms'):>7.2f} {m('p999_ms'):>8.2f} "
              f"{m('lost'):>5.0f} {fmt(m('frames_per_write'), '>9.1f')} {fmt(m('frames_per_segment'), '>6.1f')} {m('loadgen_cpu_pct'):>7.0f}%"
              + (f"  (loadgen saturated in {sat}/{len(rs)})" if sat else ""))
rise = [r for r in rows if r["scenario"] == "1k-rise"]
if rise:
    print("\n1,000 subscribers, rising rate: highest publishes/s with p99 < 50 ms and nothing lost")
    for system in ("wsgate", "bun"):
        rs = [r for r in rise if r["system"] == system]
        # Rows come in rounds, each rising until it fails: the best passing rate per round.
        best, rounds, cur = [], [], []
        for r in rs:
            if cur and r["rate"] <= cur[-1]["rate"]:
                rounds.append(cur); cur = []
            cur.append(r)
        if cur:
            rounds.append(cur)
        for rr in rounds:
            ok = [r for r in rr if r["ok"] and r["p99_ms"] < 50 and r["lost"] == 0]
            best.append(max((r["rate"] for r in ok), default=0))
        top = [r for rr in rounds for r in rr if r["ok"]]
        detail = ", ".join(f"{r['rate']}/s p99 {r['p99_ms']:.1f} ms lost {r['lost']}" for r in rounds[-1]) if rounds else ""
        print(f"  {system:8} median {med(best):,.0f}/s (rounds: {best})   last round: {detail}")
PY
echo "took $((SECONDS - start)) s; results: $results"
