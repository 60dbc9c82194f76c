#!/usr/bin/env bash
# Soak test (not in CI): one wsgate under a mixed load for a long time, per I/O driver,
# failing if its memory or file descriptors grow without bound or if a well-behaved
# subscriber loses, duplicates or reorders a message.
#
# usage: scripts/soak.sh [DURATION]        e.g. scripts/soak.sh 30m; SOAK_DURATION=60s
#
# For each driver (WSGATE_IO=epoll|uring; default both in turn, uring skipped with the
# probe's reason where the kernel refuses it), all at once against one server:
#   - fan-out over /ws: SOAK_SUBSCRIBERS (200) subscribers, SOAK_RATE (100) publishes/s
#     published over /ws by a loadgen (topic soak-ws);
#   - the same over HTTP, POST /publish (topic soak-http);
#   - churn: SOAK_CHURN (20) new connections/s, each held 1 s then closed (loadgen connect);
#   - SOAK_SLOW (4) slow consumers subscribed to both topics that never read (python3, raw
#     sockets); the server must cut each off within 15 s (small --max-outbound-bytes, or
#     the pong timeout), which they check, then reconnect;
#   - pings: the server pings every connection silent for 5 s (--idle-timeout), so the
#     subscribers answer pings all along and the slow consumers never do.
# Every SOAK_INTERVAL (5 s) it samples the server's RSS, open fds and threads
# (/proc/PID/{status,fd}) and every /metrics family (summed over labels) into
# bench-results/soak-<date>/<driver>/samples.csv.
#
# Verdict, per driver, over the samples after the warm-up (the first 20% of the run, at
# most 2 minutes): RSS and fds fail when the median of the last 10% exceeds the median of
# the first 10% by more than the tolerance (RSS: SOAK_RSS_TOL_PCT, 20%, at least 8 MiB;
# fds: 20%, at least 64), or when the least-squares trend over the whole window and over
# its second half both project more than that tolerance (steady growth). Once the load has
# stopped the fds must return to within 8 of where they were before it started. Each
# fan-out loadgen must report deliveries, 0 lost, 0 duplicates, 0 reordered and no errors;
# churn must see no connect, handshake, reset or protocol errors.
#
# Builds with `cargo build --release --workspace` first (CARGO_TARGET_DIR is honoured).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration="${1:-${SOAK_DURATION:-30m}}"
interval="${SOAK_INTERVAL:-5}"
subscribers="${SOAK_SUBSCRIBERS:-200}"
rate="${SOAK_RATE:-100}"
churn="${SOAK_CHURN:-20}"
slow="${SOAK_SLOW:-4}"
rss_tol="${SOAK_RSS_TOL_PCT:-20}"
drivers=("${WSGATE_IO:-epoll uring}")
read -r -a drivers <<<"${drivers[*]}"

secs_of() { # 90s, 30m, 1h, 500ms -> whole seconds
  case "$1" in
    *ms) echo $(((${1%ms} + 999) / 1000)) ;;
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
  esac
}
secs=$(secs_of "$duration")
((secs >= 20)) || { echo "soak.sh: duration $duration is under 20 s" >&2; exit 2; }

results="bench-results/soak-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results"
source scripts/lib/common.sh
trap stop_pids EXIT

build_release

fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# Every metric family, summed over its labels (histogram buckets left out), as "name value";
# results labelled "timeout" also apart, as name_timeout (the server's handshake timeouts).
scrape() {
  curl -sf --max-time 2 "http://127.0.0.1:$1/metrics" |
    awk '!/^#/ && NF >= 2 && $1 !~ /_bucket($|\{)/ {n = $1; sub(/\{.*/, "", n); s[n] += $NF
         if ($1 ~ /result="timeout"/) s[n "_timeout"] += $NF}
         END {for (n in s) printf "%s %.0f\n", n, s[n]}' | sort
}

# Subscribes to both topics on `n` raw sockets and never reads. The server must cut each
# one off by `probe` seconds after its upgrade (ping unanswered, or outbound queue over the
# cap, then the close timeout), but a client that never reads cannot see that: the server's
# FIN waits behind the data the client never took. So at `probe` s each sends one byte (an
# empty masked pong); a socket the server has closed answers with RST. Counts the sockets
# found cut off and those that survived, reconnects each, and prints the counts as JSON
# on SIGTERM.
slow_consumers() { # port n probe_s out.json
  exec python3 - "$@" <<'PY'
import base64, json, os, signal, socket, sys, time
port, n, probe, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
TCP_ESTABLISHED = 1
stats = {"connections": 0, "cut_off": 0, "survived": 0}

def connect():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?subscribe=soak-ws,soak-http HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    stats["connections"] += 1
    return s, time.monotonic()

def stop(*_):
    json.dump(stats, open(out, "w"))
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
socks = []
for _ in range(n):  # staggered, so the probes spread out
    socks.append(connect())
    time.sleep(probe / n)
while True:
    time.sleep(0.5)
    due = [i for i, (_, t) in enumerate(socks) if time.monotonic() - t >= probe]
    for i in due:
        try:
            socks[i][0].send(b"\x8a\x80" + os.urandom(4))
        except OSError:
            pass
    time.sleep(0.3)
    for i in due:
        s = socks[i][0]
        state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        stats["cut_off" if state != TCP_ESTABLISHED else "survived"] += 1
        s.close()
        socks[i] = connect()
PY
}

# Judges one driver's run; prints the summary and exits non-zero on a failure.
verdict() { # dir secs
  python3 - "$@" "$rss_tol" <<'PY'
import csv, json, statistics, sys
d, secs, rss_tol = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = list(csv.DictReader(open(f"{d}/samples.csv")))
meta = json.load(open(f"{d}/meta.json"))
failures = []
warm = min(0.2 * secs, 120)
window = [r for r in rows if float(r["t_s"]) >= warm]
if len(window) < 10:
    failures.append(f"only {len(window)} samples after the warm-up")

def slope(pts):  # least squares, per second
    n = len(pts)
    if n < 3:
        return 0.0
    mx = sum(t for t, _ in pts) / n
    my = sum(v for _, v in pts) / n
    den = sum((t - mx) ** 2 for t, _ in pts)
    return sum((t - mx) * (v - my) for t, v in pts) / den if den else 0.0

def growth(col, pct, floor, unit):
    pts = [(float(r["t_s"]), float(r[col])) for r in window if r[col]]
    if len(pts) < 10:
        return f"{col}: too few samples"
    k = max(1, len(pts) // 10)
    first = statistics.median(v for _, v in pts[:k])
    last = statistics.median(v for _, v in pts[-k:])
    span = pts[-1][0] - pts[0][0]
    tol = max(first * pct / 100, floor)
    trend = slope(pts) * span
    trend2 = slope(pts[len(pts) // 2:]) * span / 2
    line = (f"{col}: {first:.0f} -> {last:.0f} {unit} (median of first/last 10% after "
            f"{warm:.0f} s warm-up), trend {trend:+.0f} over the window, "
            f"{trend2:+.0f} over its second half, tolerance {tol:.0f}")
    print("  " + line)
    if last - first > tol:
        failures.append(f"{col} grew: {line}")
    elif trend > tol and trend2 > tol / 2:
        failures.append(f"{col} trends up: {line}")
    return None

print(f"  {len(rows)} samples, {len(window)} after the warm-up")
for problem in [growth("rss_kb", rss_tol, 8 * 1024, "KiB"), growth("fds", 20, 64, "fds")]:
    if problem:
        failures.append(problem)
print(f"  fds before load {meta['fds_before']}, after load {meta['fds_after']}")
if meta["fds_after"] > meta["fds_before"] + 8:
    failures.append(f"fds did not return after the load: {meta['fds_before']} -> {meta['fds_after']}")
print(f"  rss before load {meta['rss_before_kb']} KiB, peak {max(int(r['rss_kb']) for r in rows)} KiB,"
      f" after load {meta['rss_after_kb']} KiB")

for name in ("fanout-ws", "fanout-http"):
    try:
        f = json.load(open(f"{d}/{name}.json"))
    except (OSError, ValueError) as e:
        failures.append(f"{name}: no result ({e})")
        continue
    fo, errors = f["fanout"], f["errors"]
    nonzero = {k: v for k, v in errors.items() if v} or 0
    print(f"  {name}: {fo['subscribers']} subscribers, {fo['deliveries']} deliveries of "
          f"{fo['expected']} expected, lost {fo['lost']}, duplicates {fo['duplicates']}, "
          f"reordered {fo['reordered']}, p99 {f['latency_us']['p99']} us, errors {nonzero}")
    if fo["deliveries"] == 0:
        failures.append(f"{name}: no deliveries")
    for key in ("lost", "duplicates", "reordered"):
        if fo[key]:
            failures.append(f"{name}: {key} {fo[key]}")
    if sum(errors.values()):
        failures.append(f"{name}: errors {errors}")
try:
    c = json.load(open(f"{d}/churn.json"))
    bad = {k: c["errors"][k] for k in ("connect", "handshake", "reset", "protocol", "timeout")
           if c["errors"].get(k)}
    server_timeouts = rows[-1].get("wsgate_handshakes_total_timeout", "?") if rows else "?"
    print(f"  churn: {c['received']} handshakes, p99 {c['latency_us']['p99']} us, errors {bad or 0}"
          f" (server-side handshake timeouts: {server_timeouts})")
    if c["received"] == 0 or bad:
        failures.append(f"churn: {c['received']} handshakes, errors {bad}")
except (OSError, ValueError, KeyError) as e:
    failures.append(f"churn: no result ({e})")
try:
    s = json.load(open(f"{d}/slow.json"))
    print(f"  slow consumers: {s['connections']} connections, {s['cut_off']} found cut off by "
          f"the server, {s['survived']} not")
    if s["survived"]:
        failures.append(f"slow consumers: {s['survived']} still open 15 s after connecting")
except (OSError, ValueError) as e:
    failures.append(f"slow consumers: no result ({e})")

for problem in failures:
    print(f"  FAIL {problem}")
print("  PASS" if not failures else "  FAILED")
sys.exit(1 if failures else 0)
PY
}

soak() { # driver
  local io=$1 dir="$results/$1" port
  mkdir -p "$dir"
  port=$(free_port)
  "$gw" serve --listen "127.0.0.1:$port" --io "$io" --client-publish '*' \
    --idle-timeout 5s --pong-timeout 5s --close-timeout 2s --max-outbound-bytes 65536 \
    >"$dir/server.log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    if ! kill -0 "$server" 2>/dev/null; then
      if [[ $io == uring ]] && grep -q "io_uring is unavailable" "$dir/server.log"; then
        echo "soak.sh: uring skipped: $(grep -o 'io_uring is unavailable.*' "$dir/server.log" | head -n 1)"
        return 0
      fi
      echo "soak.sh: wsgate ($io) did not start:" >&2
      cat "$dir/server.log" >&2
      return 1
    fi
    sleep 0.1
  done
  printf '\n==> soak %s: %s, wsgate pid %s on port %s, results in %s\n' \
    "$io" "$duration" "$server" "$port" "$dir"
  local fds_before rss_before
  fds_before=$(fds "$server")
  rss_before=$(status_kb "$server" VmRSS)

  local url="ws://127.0.0.1:$port/ws" common=(--threads 1 --quiet --warmup 5s --drain 2s)
  local loads=()
  "$lg" fanout "${common[@]}" --url "$url" --subscribers "$subscribers" --publishers 2 \
    --rate "$rate" --topic soak-ws --duration "${secs}s" --json "$dir/fanout-ws.json" \
    >"$dir/fanout-ws.txt" 2>&1 &
  loads+=($!)
  "$lg" fanout "${common[@]}" --url "$url" --subscribers "$subscribers" --publishers 2 \
    --rate "$rate" --topic soak-http --publish-via http --duration "${secs}s" \
    --json "$dir/fanout-http.json" >"$dir/fanout-http.txt" 2>&1 &
  loads+=($!)
  "$lg" connect "${common[@]}" --url "$url" --rate "$churn" --hold 1s --duration "${secs}s" \
    --json "$dir/churn.json" >"$dir/churn.txt" 2>&1 &
  loads+=($!)
  pids+=("${loads[@]}")
  # Cut off by idle + pong + close timeout (5 + 5 + 2 s); probed 3 s later.
  slow_consumers "$port" "$slow" 15 "$dir/slow.json" &
  local slow_pid=$!
  pids+=("$slow_pid")

  # Sample until every loadgen has finished.
  local start=$SECONDS names=() header values line
  while :; do
    local running=0
    for p in "${loads[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
    ((running)) || break
    if ! kill -0 "$server" 2>/dev/null; then
      echo "soak.sh: wsgate ($io) died; log tail:" >&2
      tail -n 20 "$dir/server.log" >&2
      return 1
    fi
    mapfile -t metrics < <(scrape "$port" || true)
    if ((${#names[@]} == 0 && ${#metrics[@]} > 0)); then
      for m in "${metrics[@]}"; do names+=("${m%% *}"); done
      header="t_s,rss_kb,fds,threads$(printf ',%s' "${names[@]}")"
      echo "$header" >"$dir/samples.csv"
    fi
    if ((${#names[@]})); then
      declare -A value=()
      for m in "${metrics[@]}"; do value[${m%% *}]=${m#* }; done
      values=""
      for n in "${names[@]}"; do values+=",${value[$n]:-}"; done
      unset value
      line="$((SECONDS - start)),$(status_kb "$server" VmRSS),$(fds "$server"),$(status_kb "$server" Threads)$values"
      echo "$line" >>"$dir/samples.csv"
    fi
    sleep "$interval"
  done
  local failed=0
  for p in "${loads[@]}"; do wait "$p" || failed=1; done
  kill "$slow_pid" 2>/dev/null || true
  wait "$slow_pid" 2>/dev/null || true
  ((failed)) && echo "soak.sh: a loadgen exited non-zero (see $dir/*.txt)"

  # With every client gone the server must give its fds back (close handshakes take up to
  # --close-timeout).
  local fds_after
  for _ in $(seq 50); do
    fds_after=$(fds "$server")
    ((fds_after <= fds_before + 8)) && break
    sleep 0.2
  done
  printf '{"fds_before": %d, "fds_after": %d, "rss_before_kb": %d, "rss_after_kb": %d}\n' \
    "$fds_before" "$fds_after" "$rss_before" "$(status_kb "$server" VmRSS)" >"$dir/meta.json"
  kill -INT "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  echo "--- $io"
  verdict "$dir" "$secs" && ((!failed))
}

status=0
for io in "${drivers[@]}"; do
  soak "$io" || status=1
done
printf '\n==> soak %s: %s (results in %s)\n' "${drivers[*]}" \
  "$( ((status)) && echo FAILED || echo passed)" "$results"
exit "$status"
