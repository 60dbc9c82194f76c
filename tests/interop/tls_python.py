"""Python websockets over wss://, trusting the test CA: echo, pub/sub with an HTTP publish
on the plain port, and the close handshake. usage: tls_python.py TLS_PORT PLAIN_PORT CA_PEM"""
import json
import ssl
import sys
import urllib.request

from websockets.sync.client import connect

tls_port, plain_port, ca = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
base = f"wss://localhost:{tls_port}"

with connect(f"{base}/echo", ssl=ctx, open_timeout=10) as ws:
    for text in ["hello", "é" * 1000, "x" * 100_000]:
        ws.send(text)
        assert ws.recv(timeout=10) == text
    ws.send(b"\x00\x01\x02")
    assert ws.recv(timeout=10) == b"\x00\x01\x02"

with connect(f"{base}/ws?subscribe=py", ssl=ctx, open_timeout=10) as ws:
    req = urllib.request.Request(
        f"http://127.0.0.1:{plain_port}/publish/py", data=b'{"n":1}', method="POST"
    )
    assert urllib.request.urlopen(req, timeout=10).status == 202
    assert json.loads(ws.recv(timeout=10)) == {"topic": "py", "data": {"n": 1}}
    ws.close(1000, "bye")
    assert ws.close_code == 1000, ws.close_code

# A certificate the context does not trust is refused by the client.
try:
    connect(f"{base}/echo", ssl=ssl.create_default_context(), open_timeout=10)
    raise SystemExit("an untrusted certificate was accepted")
except ssl.SSLCertVerificationError:
    pass
print("python websockets over wss: ok")
