# Sourced by the benchmark and soak scripts, from the repository root: the release
# binaries, the processes to stop on exit, and small probes of a running server.
# A script adds what it starts to `pids`; its EXIT trap calls `stop_pids` (and removes its
# own temporary files, if any).

tick=$(getconf CLK_TCK)
pids=()
stop_pids() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# Builds the release binaries (CARGO_TARGET_DIR is honoured); sets $gw and $lg and raises
# the open-files limit to the hard one.
build_release() {
  cargo build --release --quiet --workspace --bins
  gw="${CARGO_TARGET_DIR:-target}/release/wsgate"
  lg="${CARGO_TARGET_DIR:-target}/release/wsgate-loadgen"
  ulimit -n "$(ulimit -Hn)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# utime + stime of a process, in clock ticks ($tick a second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# The gateway's deliveries so far, summed over its reactors.
deliveries() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^wsgate_deliveries_total/ {s += $2} END {print s + 0}'; }
wait_healthy() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2
  exit 1
}
