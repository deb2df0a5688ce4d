// A Chromium page under remote control, for the pytest browser tests (tests/chromium.py).
//
// Commands arrive on stdin, one JSON object a line: {"id": 1, "do": "goto", "url": "..."}.
// Each is answered on stdout with {"id": 1, "value": ...} or {"id": 1, "error": "..."}.
// What the page says on its own is reported as {"console": "..."} or {"pageerror": "..."}.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

function say(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: CHROMIUM_ARGS,
  timeout: 30000,
});
const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
page.on("console", (message) => say({ console: message.text(), type: message.type() }));
page.on("pageerror", (error) => say({ pageerror: String(error) }));

// An expression handed over as a function, which the page's Content-Security-Policy (no
// 'unsafe-eval') lets the browser run: Playwright evaluates a string with eval.
function asFunction(expression) {
  return new Function(`return (${expression});`);
}

const commands = {
  goto: ({ url }) => page.goto(url, { waitUntil: "load" }).then(() => null),
  fill: ({ selector, value }) => page.fill(selector, value).then(() => null),
  click: ({ selector }) => page.click(selector).then(() => null),
  text: ({ selector }) => page.textContent(selector),
  evaluate: ({ expression }) => page.evaluate(asFunction(expression)),
  waitFor: ({ expression, timeout }) =>
    page
      .waitForFunction(asFunction(expression), null, { timeout, polling: 50 })
      .then((handle) => handle.jsonValue()),
  screenshot: ({ path }) => page.screenshot({ path, fullPage: true }).then(() => path),
  close: async () => {
    await browser.close();
    return null;
  },
};

say({ ready: true });
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { id, do: name, ...args } = JSON.parse(line);
  try {
    const command = commands[name];
    if (!command) throw new Error(`no command ${name}`);
    say({ id, value: (await command(args)) ?? null });
  } catch (error) {
    say({ id, error: String(error && error.message ? error.message : error) });
  }
  if (name === "close") break;
}
await browser.close().catch(() => {});
process.exit(0);
