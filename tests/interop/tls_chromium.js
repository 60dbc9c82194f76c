// Chromium (headless, ignoring certificate errors) over wss://: echo from a page.
// usage: node tls_chromium.js TLS_PORT   (NODE_PATH: the npm cache's node_modules)
const { chromium } = require("playwright-core");
const [port] = process.argv.slice(2);
(async () => {
  const dir = require("fs").mkdtempSync(require("os").tmpdir() + "/wsgate-chromium-");
  const browser = await chromium.launchPersistentContext(dir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    ignoreHTTPSErrors: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--ignore-certificate-errors",
      "--no-first-run", "--disable-background-networking", "--disable-component-update",
      "--disable-sync"],
  });
  const page = await browser.newPage();
  const result = await page.evaluate(
    (url) =>
      new Promise((resolve) => {
        const ws = new WebSocket(url);
        const got = [];
        ws.onopen = () => ["one", "two", "x".repeat(70000)].forEach((m) => ws.send(m));
        ws.onmessage = (e) => {
          got.push(e.data.length > 10 ? `${e.data.length}` : e.data);
          if (got.length === 3) ws.close(1000);
        };
        ws.onclose = (e) => resolve({ code: e.code, got });
        ws.onerror = () => resolve({ error: true });
        setTimeout(() => resolve({ timeout: true, got }), 10000);
      }),
    `wss://localhost:${port}/echo`
  );
  await browser.close();
  const ok = result.code === 1000 && result.got.join(",") === "one,two,70000";
  console.log(`chromium over wss: ${ok ? "ok" : "FAILED " + JSON.stringify(result)}`);
  process.exit(ok ? 0 : 1);
})().catch((e) => {
  console.error(`chromium over wss: ${e.message}`);
  process.exit(1);
});
