// The comparison server for scripts/bench-tls.sh: Bun.serve (uWebSockets + BoringSSL)
// speaking wsgate's dialect on the same loads: /echo echoes, /ws?subscribe=T subscribes,
// {"op":"publish",...} and POST /publish/T publish {"topic":T,"data":...} to subscribers.
// usage: bun scripts/bun-server.js PLAIN_PORT [TLS_PORT CERT_PEM KEY_PEM]
const [plainPort, tlsPort, cert, key] = process.argv.slice(2);

const websocket = {
  perMessageDeflate: false,
  idleTimeout: 0,
  maxPayloadLength: 1 << 20,
  open(ws) {
    for (const topic of ws.data.topics) ws.subscribe(topic);
  },
  message(ws, message) {
    if (ws.data.echo) {
      ws.send(message);
      return;
    }
    let m;
    try {
      m = JSON.parse(message);
    } catch {
      return;
    }
    if (m.op === "publish") {
      ws.data.server.publish(m.topic, JSON.stringify({ topic: m.topic, data: m.data }));
    } else if (m.op === "subscribe") {
      ws.subscribe(m.topic);
      ws.send(JSON.stringify({ op: "ok", id: m.id }));
    }
  },
};

function fetch(req, server) {
  const url = new URL(req.url);
  if (url.pathname === "/healthz") return new Response("ok\n");
  if (req.method === "POST" && url.pathname.startsWith("/publish/")) {
    const topic = url.pathname.slice("/publish/".length);
    return req.text().then((body) => {
      server.publish(topic, `{"topic":"${topic}","data":${body}}`);
      return new Response(null, { status: 202 });
    });
  }
  const topics = (url.searchParams.get("subscribe") || "").split(",").filter(Boolean);
  const data = { echo: url.pathname === "/echo", topics, server };
  if (server.upgrade(req, { data })) return;
  return new Response("not found\n", { status: 404 });
}

Bun.serve({ hostname: "127.0.0.1", port: Number(plainPort), fetch, websocket });
if (tlsPort) {
  Bun.serve({
    hostname: "127.0.0.1",
    port: Number(tlsPort),
    tls: { cert: Bun.file(cert), key: Bun.file(key) },
    fetch,
    websocket,
  });
}
console.log(`bun listening on ${plainPort}${tlsPort ? `, tls ${tlsPort}` : ""}`);
