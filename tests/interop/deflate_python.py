#!/usr/bin/env python3
"""permessage-deflate with an independent client: Python `websockets` (compression is on by
default). Echo and pub/sub round-trip compressed; wire bytes are counted under the client to
show that the server really compressed. usage: deflate_python.py HOST:PORT"""

import json
import socket
import sys
import urllib.request
import warnings

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.sync.client import connect

# websockets 14+ nags when a sync connection is not used as a context manager; these are
# closed explicitly.
warnings.filterwarnings("ignore", category=DeprecationWarning)

ADDR = sys.argv[1]
HOST, PORT = ADDR.rsplit(":", 1)


class Counting(socket.socket):
    """A socket that counts the bytes the client reads off the wire."""

    received = 0

    def recv(self, n, *args):
        data = super().recv(n, *args)
        self.received += len(data)
        return data


def open_ws(path):
    sock = Counting(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect((HOST, int(PORT)))
    ws = connect(f"ws://{ADDR}{path}", sock=sock, open_timeout=10, close_timeout=5)
    [ext] = ws.protocol.extensions
    assert isinstance(ext, PerMessageDeflate), ext
    # The server drops its context: every message compressed on its own.
    assert ext.remote_no_context_takeover and ext.local_no_context_takeover, vars(ext)
    return ws, sock


def ticks(n):
    return [{"s": "BTC-USD", "p": 43000.5 + i, "q": i % 7, "t": 1764000000000 + i} for i in range(n)]


ws, sock = open_ws("/echo")
for message in [json.dumps(ticks(40)), json.dumps(ticks(40)).encode(), "short", "é€😀" * 300]:
    before = sock.received
    ws.send(message)
    assert ws.recv(timeout=10) == message
    if len(message) > 1000:
        wire = sock.received - before
        assert wire < len(message) / 2, (wire, len(message))
ws.close()

subs = [open_ws("/ws?subscribe=py") for _ in range(3)]
data = ticks(30)
body = json.dumps(data).encode()
req = urllib.request.Request(f"http://{ADDR}/publish/py", data=body, method="POST",
                             headers={"Content-Type": "application/json"})
assert urllib.request.urlopen(req, timeout=10).status == 202
for ws, sock in subs:
    before = sock.received
    got = json.loads(ws.recv(timeout=10))
    assert got == {"topic": "py", "data": data}, got
    assert sock.received - before < len(body) / 2, (sock.received - before, len(body))
    ws.close()
print(f"python websockets: compressed echo and pub/sub ok ({len(body)} B published)")
