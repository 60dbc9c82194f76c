#!/usr/bin/env bash
# Real clients against a real gateway on 127.0.0.1: Python `websockets`, Node `ws` and
# headless Chromium (tests/interop/). Each client file checks its own results and exits
# non-zero on a failure; this script starts the server once per driver and runs them.
#
# usage: scripts/interop.sh
# needs: python3 with websockets; node with ws and playwright-core under
#        ${WSGATE_NPM:-~/.cache/wsgate-npm}; /usr/bin/chromium (or $CHROMIUM). `.ci/run`
#        installs them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export NODE_PATH="${WSGATE_NPM:-$HOME/.cache/wsgate-npm}/node_modules"
cargo build --release --quiet --bin wsgate
bin="${CARGO_TARGET_DIR:-target}/release/wsgate"

server=""
log="$(mktemp)"
stop() { if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; fi; }
trap 'stop; rm -f "$log"' EXIT

# Starts the gateway with the given flags on a free port; sets $addr. Returns 2 when the
# driver is unavailable on this kernel.
start() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$bin" serve --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then addr="127.0.0.1:$port"; return 0; fi
    if ! kill -0 "$server" 2>/dev/null; then
      server=""
      if grep -q "io_uring is unavailable" "$log"; then return 2; fi
      cat "$log"; echo "interop.sh: wsgate exited" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "interop.sh: wsgate did not become healthy" >&2; exit 1
}

for io in epoll uring; do
  status=0
  start --io "$io" || status=$?
  if ((status == 2)); then echo "interop.sh: $io unavailable, skipped"; continue; fi
  echo "== interop on $io"
  # permessage-deflate (issue 10): compressed echo and pub/sub; a browser negotiates it.
  python3 tests/interop/deflate_python.py "$addr"
  node tests/interop/deflate_node.js "$addr"
  if [[ "$io" == epoll ]]; then node tests/interop/deflate_chromium.js "$addr"; fi
  stop
done
echo "interop.sh: ok"
