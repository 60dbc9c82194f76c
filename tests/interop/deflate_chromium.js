// A browser negotiates permessage-deflate: headless Chromium (driven by playwright-core)
// opens a WebSocket to /echo, reads ws.extensions, and round-trips a compressible message.
// usage: node deflate_chromium.js HOST:PORT   (NODE_PATH must reach `playwright-core`)
'use strict';
const assert = require('assert');
const { chromium } = require('playwright-core');

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30000,
  });
  try {
    const page = await browser.newPage();
    const result = await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const message = JSON.stringify(Array.from({ length: 60 }, (_, i) => ({ s: 'SOL-USD', p: 150 + i })));
      ws.onopen = () => ws.send(message);
      ws.onmessage = (e) => { resolve({ extensions: ws.extensions, same: e.data === message }); ws.close(); };
      ws.onerror = () => reject(new Error('websocket error'));
      setTimeout(() => reject(new Error('timed out')), 10000);
    }), `ws://${process.argv[2]}/echo`);
    assert.match(result.extensions, /^permessage-deflate; server_no_context_takeover; client_no_context_takeover$/);
    assert.ok(result.same, 'echo differs');
    console.log(`chromium: negotiated "${result.extensions}", compressed echo ok`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
