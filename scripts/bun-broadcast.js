// Bun's pub/sub as the reference for scripts/bench-deflate.sh: every message received is
// published to topic "bench" with server.publish(..., compress = true), and every connection
// subscribes. perMessageDeflate on, as Bun documents it.  usage: bun scripts/bun-broadcast.js PORT
const port = Number(process.argv[2]);
const server = Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, server) {
    if (new URL(req.url).pathname === '/healthz') return new Response('ok');
    return server.upgrade(req) ? undefined : new Response('upgrade required', { status: 426 });
  },
  websocket: {
    perMessageDeflate: true,
    idleTimeout: 0,
    open(ws) { ws.subscribe('bench'); },
    message(ws, message) { server.publish('bench', message, true); },
  },
});
console.log(`bun ${Bun.version} listening on ${server.hostname}:${server.port}`);
