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
# The gateway's deliveries so far, summed over its reactors (0 if it does not answer in 2 s).
deliveries() { curl -sf -m 2 "http://127.0.0.1:$1/metrics" | awk '/^wsgate_deliveries_total/ {s += $2} END {print s + 0}'; }
# Data segments sent with new data on this machine so far (TcpExt TCPOrigDataSent, all
# sockets, retransmissions left out): read at once, where walking 10,000 sockets' TCP_INFO
# with ss took seconds beside a busy loadgen and sampled each socket at another time (the
# frames per segment it gave at 10,000 x 100/s ranged from 5 to 230). On loopback the
# server sends nearly all of them; the publisher's are subtracted by the caller.
orig_data_sent() {
  awk '/^TcpExt:/ {if (!h) {for (i = 1; i <= NF; i++) if ($i == "TCPOrigDataSent") k = i; h = 1}
       else print $k}' /proc/net/netstat
}
# Established connections on the server's port $1.
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }
# Bytes the clients' kernels have acknowledged on the server's established sockets on port
# $1: what reached the clients, counted by the kernel whatever the server says it sent.
acked_bytes() {
  ss -Htin state established "( sport = :$1 )" |
    awk '{ for (i = 1; i <= NF; i++) if (sub(/^bytes_acked:/, "", $i)) s += $i } END { printf "%.0f\n", s }'
}
wait_healthy() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2
  exit 1
}
