#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/) and runs each for SECONDS (default 30), one after
# the other, from its committed seeds (fuzz/corpus/<target>). Fails on the first crash,
# hang (one input over 10 s) or out-of-memory, whose input lands in fuzz/artifacts/<target>/;
# prints each target's executions. Needs the nightly toolchain and cargo-fuzz.
#
# usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   scripts/fuzz.sh               every target, 30 s each
#   scripts/fuzz.sh 3600 frame    one target for an hour
# Reproduce a crash: cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
#
# Inputs the fuzzer finds accumulate in fuzz/target/corpus/<target> (not committed), so
# later runs start where earlier ones stopped. Builds are optimized with debug assertions,
# overflow checks and AddressSanitizer (cargo-fuzz's default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${1:-30}"
(($# > 0)) && shift
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz on the nightly toolchain:" \
    "cargo +nightly install cargo-fuzz --locked" >&2
  exit 2
fi
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo +nightly fuzz list)

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

printf '==> build %s\n' "${targets[*]}"
if ((${#targets[@]} == 1)); then
  cargo +nightly fuzz build "${targets[0]}"
else
  cargo +nightly fuzz build
fi
summary=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  printf '\n==> fuzz %s (%s s)\n' "$t" "$secs"
  # -timeout: a single input running 10 s is a hang; -rss_limit_mb: libFuzzer's default.
  if ! cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$logs/$t.log" 2>&1; then
    tail -n 60 "$logs/$t.log"
    echo "fuzz.sh: target $t failed; input in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$logs/$t.log")
  cov=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true)
  summary+=("$(printf '%-12s %12s execs in %s s  (%s)' "$t" "${execs:-?}" "$secs" "$cov")")
  echo "${summary[-1]}"
done
printf '\n==> fuzz summary\n'
printf '%s\n' "${summary[@]}"
