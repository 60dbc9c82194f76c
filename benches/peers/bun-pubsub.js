// Bun's reference pub/sub server for scripts/compare.sh, speaking the subset of wsgate's
// /ws protocol the loadgen uses: `/ws?subscribe=TOPIC` subscribes at the upgrade,
// {"op":"subscribe","topic":T} later, and {"op":"publish","topic":T,"data":D} sends
// {"topic":T,"data":D} to every subscriber (server.publish, no compression), as wsgate does.
// usage: PORT=9000 bun benches/peers/bun-pubsub.js
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT || 9000),
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/healthz") return new Response("ok\n");
    if (url.pathname !== "/ws") return new Response("not found\n", { status: 404 });
    const topics = url.searchParams.getAll("subscribe");
    if (server.upgrade(req, { data: { topics } })) return;
    return new Response("upgrade required\n", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    // As wsgate's 64 KiB publish limit and per-connection queue cap (slow consumers).
    maxPayloadLength: 64 * 1024,
    backpressureLimit: 1024 * 1024,
    closeOnBackpressureLimit: true,
    idleTimeout: 0,
    open(ws) {
      for (const t of ws.data.topics) ws.subscribe(t);
    },
    message(ws, text) {
      let m;
      try {
        m = JSON.parse(text);
      } catch {
        ws.close(1007, "not JSON");
        return;
      }
      if (m.op === "publish" && typeof m.topic === "string") {
        server.publish(m.topic, JSON.stringify({ topic: m.topic, data: m.data }));
      } else if (m.op === "subscribe" && typeof m.topic === "string") {
        ws.subscribe(m.topic);
        if (m.id !== undefined) ws.send(JSON.stringify({ op: "ok", id: m.id }));
      }
    },
  },
});
console.log(`bun ${Bun.version} pub/sub on ${server.hostname}:${server.port}`);
