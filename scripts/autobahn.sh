#!/usr/bin/env bash
# Runs the Autobahn TestSuite (wstest 25.10.1 fuzzingclient) against wsgate's /echo on one
# driver and compares every case with autobahn/expected-results.json: fails on any case that
# does worse. By default the whole suite, 1.* to 13.* (517 cases; 12.* and 13.* are
# permessage-deflate): about 7 minutes here, most of it the compression groups.
# scripts/ci.sh runs it on both drivers and over wss on both, side by side (scripts/lib/together.sh).
#
# usage: scripts/autobahn.sh [--tls] [--update]
#   --tls     over wss://: wsgate terminates TLS (`--tls-listen`) with a certificate made
#             here by openssl; the fuzzingclient (Twisted with pyOpenSSL) connects to wss://
#             itself, verifying that certificate (SSL_CERT_FILE) and sending SNI, so no relay
#             stands between them. Default cases 1.* to 10.*.
#   --update  merges this run's results into the expected results
# env:   WSGATE_IO=epoll|uring  the driver under test (default: the server's auto)
#        AUTOBAHN_CASES         comma-separated case patterns (default: see above)
#        AUTOBAHN_OUT           report directory (default target/autobahn/<io>[-tls])
#        AUTOBAHN_TOOLS         the runner (default ../shared/tools/autobahn)
#        AUTOBAHN_TIMEOUT       bound on the whole run in seconds (default 1800)
#        AUTOBAHN_SKIP_UNAVAILABLE=1  exit 0 (saying why) when WSGATE_IO=uring and the
#                               kernel refuses io_uring, instead of failing
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tls=0 update=0
for arg in "$@"; do
  case "$arg" in
    --tls) tls=1 ;;
    --update) update=1 ;;
    *) echo "usage: scripts/autobahn.sh [--tls] [--update]" >&2; exit 2 ;;
  esac
done
tools="${AUTOBAHN_TOOLS:-$(cd ../shared/tools/autobahn && pwd)}"
export AUTOBAHN_TOOLS="$tools"
export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-1800}"
if ((tls)); then
  cases="${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*}"
else
  cases="${AUTOBAHN_CASES:-*}"
fi
io="${WSGATE_IO:-auto}"
suffix=""
((tls)) && suffix=-tls
out="${AUTOBAHN_OUT:-target/autobahn/$io$suffix}"
expected="autobahn/expected-results.json"

source scripts/lib/common.sh
cargo build --release --quiet --bin wsgate
port=$(free_port)
tmp="$(mktemp -d)"
log="$tmp/server.log"
args=(serve --listen "127.0.0.1:$port" --io "$io")
if ((tls)); then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  tls_port=$(free_port)
  args+=(--tls-listen "127.0.0.1:$tls_port" --tls-certs "$tmp/cert.pem:$tmp/key.pem")
fi
# Cases 9.* send messages of up to 16 MiB: raise the /echo limits (1 MiB by default) to that.
"${CARGO_TARGET_DIR:-target}/release/wsgate" "${args[@]}" \
  --max-frame-size 16777216 --max-message-size 16777216 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then
    if [[ "${AUTOBAHN_SKIP_UNAVAILABLE:-0}" == 1 ]] && grep -q "io_uring is unavailable" "$log"; then
      echo "autobahn.sh: skipped: $(grep -o 'io_uring is unavailable.*' "$log")"
      exit 0
    fi
    cat "$log"; echo "autobahn.sh: wsgate exited" >&2; exit 1
  fi
  sleep 0.1
done
grep -m1 "listening" "$log" || true

# The shared run.sh takes only ws:// URLs; over wss the same wstest wrapper runs here with a
# spec naming the wss:// URL and the SNI name, one process for all the selected cases.
run_wss() {
  local url="wss://localhost:$tls_port/echo" rc=0 t0
  # shellcheck disable=SC1091
  source "${AUTOBAHN_ENV:-$HOME/.cache/autobahn-env}/env.sh"
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  "$AB_PY2" "$tools/list_cases.py" "$cases" >"$out/cases.txt"
  python3 - "$out" "$url" "$out/cases.txt" <<'EOF'
import json, sys
out, url, cases = sys.argv[1:4]
json.dump({"outdir": out, "servers": [{"agent": "testee", "url": url, "hostname": "localhost"}],
           "cases": open(cases).read().split(), "exclude-cases": [], "exclude-agent-cases": {}},
          open(out + "/spec.json", "w"), indent=1)
EOF
  echo "autobahn: AutobahnTestSuite 25.10.1 (Python 2.7) fuzzingclient -> $url ($(wc -l <"$out/cases.txt") cases)"
  t0=$(date +%s)
  # Twisted verifies the server against OpenSSL's default trust, which SSL_CERT_FILE sets.
  (cd "$out" && SSL_CERT_FILE="$tmp/cert.pem" timeout -s TERM -k 30 "$AUTOBAHN_TIMEOUT" \
    "$AB_PY2" "$tools/wstest_bounded.py" -m fuzzingclient -s spec.json >wstest.log 2>&1) || rc=$?
  echo "autobahn: wall time $(($(date +%s) - t0))s (wstest rc=$rc)"
  # Every case is one connection: each must have come through the TLS listener.
  local handshakes
  handshakes=$(curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^wsgate_tls_handshakes_total.*result="ok"/ {s += $2} END {print s + 0}')
  echo "autobahn: $handshakes TLS handshakes completed"
  if ((handshakes < $(wc -l <"$out/cases.txt"))); then
    echo "autobahn.sh: fewer TLS handshakes than cases" >&2; rc=1
  fi
  python3 "$tools/summarize.py" "$out/index.json" --expected "$out/cases.txt" \
    --json "$out/summary.json" | tee "$out/summary.txt" && ((rc == 0)) && return
  echo "autobahn.sh: the end of $out/wstest.log:"; tail -n 20 "$out/wstest.log"
  return 1
}

rm -rf "$out"
status=0
if ((tls)); then run_wss || status=$?; else "$tools/run.sh" "ws://127.0.0.1:$port/echo" "$cases" "$out" || status=$?; fi
kill -0 "$server" 2>/dev/null || { cat "$log"; echo "autobahn.sh: wsgate died during the run" >&2; exit 1; }

if ((update)); then
  python3 scripts/autobahn_compare.py "$out/index.json" "$expected" --update
else
  python3 scripts/autobahn_compare.py "$out/index.json" "$expected"
fi
exit "$status"
