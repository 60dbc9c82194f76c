#!/usr/bin/env bash
# Real, independent clients against a running wsgate (tests/interop/): Python websockets,
# Node ws and Chromium. Each helper adds its own lines below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --quiet -p wsgate
gw="${CARGO_TARGET_DIR:-target}/debug/wsgate"

# wss:// (#11): Python websockets and Node ws trusting a certificate made here, Chromium.
tests/interop/tls.sh "$gw"
