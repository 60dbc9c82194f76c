// Node `ws` over wss://, trusting the test CA: echo, a large message, pub/sub, close.
// usage: node tls_node.js TLS_PORT CA_PEM   (NODE_PATH: the npm cache's node_modules)
const fs = require("fs");
const WebSocket = require("ws");
const [port, caFile] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
const fail = (why) => {
  console.error(`node ws over wss: ${why}`);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 15000).unref();

const echo = new WebSocket(`wss://localhost:${port}/echo`, { ca });
const big = "y".repeat(200000);
const expected = ["hello", big];
echo.on("open", () => expected.forEach((m) => echo.send(m)));
echo.on("message", (data) => {
  if (data.toString() !== expected.shift()) fail("echo mismatch");
  if (expected.length === 0) echo.close(1000, "done");
});
echo.on("error", (e) => fail(e.message));
echo.on("close", (code) => {
  if (code !== 1000) fail(`close code ${code}`);
  const sub = new WebSocket(`wss://localhost:${port}/ws?subscribe=node`, { ca });
  const pub = () => {
    const p = new WebSocket(`wss://localhost:${port}/ws`, { ca });
    p.on("open", () => {
      p.send(JSON.stringify({ op: "publish", topic: "node", data: "hi" }));
      p.close();
    });
  };
  sub.on("open", pub);
  sub.on("message", (data) => {
    const m = JSON.parse(data.toString());
    if (m.topic !== "node" || m.data !== "hi") fail(`delivery ${data}`);
    console.log("node ws over wss: ok");
    process.exit(0);
  });
  sub.on("error", (e) => fail(e.message));
});
