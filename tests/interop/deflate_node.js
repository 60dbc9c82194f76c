// permessage-deflate with an independent client: Node `ws` with perMessageDeflate.
// Echo and pub/sub round-trip compressed; socket.bytesRead shows the server compressed.
// usage: node deflate_node.js HOST:PORT   (NODE_PATH must reach the `ws` package)
'use strict';
const assert = require('assert');
const http = require('http');
const WebSocket = require('ws');

const addr = process.argv[2];
const ticks = (n) => Array.from({ length: n }, (_, i) => ({ s: 'ETH-USD', p: 3000.25 + i, q: i % 5 }));

function open(path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${addr}${path}`, { perMessageDeflate: true, handshakeTimeout: 10000 });
    ws.once('open', () => {
      // ws lists the extension's name; the accepted parameters are on the extension.
      assert.strictEqual(ws.extensions, 'permessage-deflate');
      const params = ws._extensions['permessage-deflate'].params;
      assert.ok(params.server_no_context_takeover && params.client_no_context_takeover, params);
      resolve(ws);
    });
    ws.once('error', reject);
  });
}

const next = (ws) => new Promise((resolve, reject) => {
  ws.once('message', (data, isBinary) => resolve({ data, isBinary }));
  ws.once('error', reject);
});

async function main() {
  const timer = setTimeout(() => { console.error('node ws: timed out'); process.exit(1); }, 20000);
  const echo = await open('/echo');
  for (const message of [JSON.stringify(ticks(50)), Buffer.from(JSON.stringify(ticks(50))), 'tiny']) {
    const before = echo._socket.bytesRead;
    const reply = next(echo);
    echo.send(message);
    const { data, isBinary } = await reply;
    assert.strictEqual(isBinary, Buffer.isBuffer(message));
    assert.strictEqual(data.toString(), message.toString());
    if (message.length > 1000) assert.ok(echo._socket.bytesRead - before < message.length / 2);
  }
  echo.close();

  const subs = await Promise.all([open('/ws?subscribe=js'), open('/ws?subscribe=js')]);
  const body = JSON.stringify(ticks(40));
  const replies = subs.map(next);
  const before = subs.map((ws) => ws._socket.bytesRead);
  await new Promise((resolve, reject) => {
    const req = http.request(`http://${addr}/publish/js`, { method: 'POST', headers: { 'Content-Type': 'application/json' } }, (res) => {
      assert.strictEqual(res.statusCode, 202);
      res.resume();
      res.on('end', resolve);
    });
    req.on('error', reject);
    req.end(body);
  });
  const got = await Promise.all(replies);
  got.forEach(({ data }, i) => {
    assert.deepStrictEqual(JSON.parse(data), { topic: 'js', data: JSON.parse(body) });
    assert.ok(subs[i]._socket.bytesRead - before[i] < body.length / 2);
    subs[i].close();
  });
  clearTimeout(timer);
  console.log(`node ws: compressed echo and pub/sub ok (${body.length} B published)`);
}

main().catch((e) => { console.error(e); process.exit(1); });
