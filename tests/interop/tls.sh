#!/usr/bin/env bash
# Real clients over wss:// against a wsgate with a TLS listener and a certificate made here:
# Python websockets (trusting it), Node ws (trusting it), OpenSSL's s_client (key updates),
# Chromium (ignoring errors).
# usage: tests/interop/tls.sh WSGATE_BINARY
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
gw=$1
dir=$(mktemp -d)
server=
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
plain=$(free_port)
tls=$(free_port)
"$gw" serve --listen "127.0.0.1:$plain" --tls-listen "127.0.0.1:$tls" --threads 2 --pin false \
  --client-publish '*' --tls-certs "$dir/cert.pem:$dir/key.pem" >"$dir/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$plain/healthz" >/dev/null && break; sleep 0.1; done
export NODE_PATH="$HOME/.cache/wsgate-npm/node_modules"
python3 tests/interop/tls_python.py "$tls" "$plain" "$dir/cert.pem"
node tests/interop/tls_node.js "$tls" "$dir/cert.pem"
python3 tests/interop/tls_openssl_keyupdate.py "$tls" "$dir/cert.pem"
if [[ -x /usr/bin/chromium ]]; then
  node tests/interop/tls_chromium.js "$tls"
else
  echo "chromium over wss: skipped (no /usr/bin/chromium)"
fi
