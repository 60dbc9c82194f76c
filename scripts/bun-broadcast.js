// Bun's pub/sub as the reference for scripts/bench-deflate.sh: every message received is
// published to topic "bench" with server.publish(..., compress = true), and every connection
// subscribes. perMessageDeflate on, as Bun documents it. /metrics counts deliveries (each
// publish times the subscribers it went to) under wsgate's metric name, so that the bench
// measures both servers alike.  usage: bun scripts/bun-broadcast.js PORT
const port = Number(process.argv[2]);
let subscribers = 0;
let deliveries = 0;
const server = Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path === '/healthz') return new Response('ok');
    if (path === '/metrics') return new Response(`wsgate_deliveries_total ${deliveries}\n`);
    return server.upgrade(req) ? undefined : new Response('upgrade required', { status: 426 });
  },
  websocket: {
    perMessageDeflate: true,
    idleTimeout: 0,
    open(ws) { ws.subscribe('bench'); subscribers += 1; },
    close() { subscribers -= 1; },
    message(ws, message) {
      server.publish('bench', message, true);
      deliveries += subscribers;
    },
  },
});
console.log(`bun ${Bun.version} listening on ${server.hostname}:${server.port}`);
