#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, unit and integration
# tests, Miri and a short fuzz run where nightly allows, a loadgen smoke run, real
# clients (scripts/interop.sh), and the Autobahn conformance runs against /echo (ws and wss).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --quiet
step "cargo test"
cargo test --workspace
step "scalar unmasking (--cfg wsgate_scalar)"
RUSTFLAGS="--cfg wsgate_scalar" CARGO_TARGET_DIR=target/scalar cargo test -p wsgate-proto --lib --quiet
if cargo +nightly miri --version >/dev/null 2>&1; then
  # AVX2 enabled at compile time so Miri runs the SIMD kernels, not just the scalar path
  # (run-time detection reports no features under Miri).
  step "miri: wsgate-proto mask (SSE2 and AVX2 kernels)"
  # The length sweep (starts 0..=3, lengths 0..=72 under Miri, every kernel and phase)
  # reaches every head, body and tail path; the wider sweeps and proptests run natively.
  RUSTFLAGS="-C target-feature=+avx2" \
    cargo +nightly miri test -p wsgate-proto --lib --quiet mask::tests::all_lengths_to_4k_match_oracle
else
  step "miri: skipped (no nightly toolchain with the miri component on this machine)"
fi
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  # A bounded run from the committed seeds: about 2 min to build (ASan) and 1 min to run
  # on 2 cores. Longer runs: scripts/fuzz.sh 3600.
  step "fuzz: every target for 10 s (cargo-fuzz, nightly)"
  scripts/fuzz.sh 10
else
  step "fuzz: skipped (no cargo-fuzz on a nightly toolchain on this machine)"
fi
step "benches build"
cargo bench --workspace --no-run --quiet
if [[ -x scripts/loadgen-smoke.sh ]]; then
  step "loadgen smoke run"
  scripts/loadgen-smoke.sh
fi
step "interop (python websockets, node ws, chromium) and autobahn, side by side"
# Real clients, Autobahn 1.* to 10.* on each driver with the compression groups (12.*, 13.*)
# split between them, and 1.* to 10.* over wss on each driver, at the same time
# (scripts/lib/together.sh: one log per job, printed whole at the end). Compression lives in
# the sans-I/O protocol core, where both drivers hand it the same bytes; running every
# compression case once, on one driver or the other, halves the step's longest job (9 of
# its 10 minutes were 12.* and 13.*, nearly all of it the Python client's CPU). The halves
# are balanced by each part's measured time; `scripts/autobahn.sh` alone still runs all
# 517 cases on one driver.
# io_uring runs are skipped, with the probe's reason, where the kernel refuses io_uring.
cargo build --release --quiet --bin wsgate
base='1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*'
source scripts/lib/together.sh
together \
  interop 'scripts/interop.sh' \
  autobahn-epoll "WSGATE_IO=epoll AUTOBAHN_CASES='$base,12.1.*,12.3.*,12.4.*,13.1.*,13.3.*,13.5.*' scripts/autobahn.sh" \
  autobahn-uring "WSGATE_IO=uring AUTOBAHN_SKIP_UNAVAILABLE=1 AUTOBAHN_CASES='$base,12.2.*,12.5.*,13.2.*,13.4.*,13.6.*,13.7.*' scripts/autobahn.sh" \
  autobahn-wss-epoll 'WSGATE_IO=epoll scripts/autobahn.sh --tls' \
  autobahn-wss-uring 'WSGATE_IO=uring AUTOBAHN_SKIP_UNAVAILABLE=1 scripts/autobahn.sh --tls'
