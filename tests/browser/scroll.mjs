// The viewer in Debian's Chromium, driven by playwright-core (tests/it/browser.rs starts it):
// scroll back to the beginning and check the events shown against the series, reload and scroll again and
// check from the server's /metrics that final pages came from the browser's cache, then send an event and
// wait for it at the top without a reload. Screenshots go to $SHOTS.
//
// Env: BASE (http://127.0.0.1:PORT), SERIES, EXPECTED (a file of the series' events, one JSON per line,
// newest first), SHOTS (a folder).
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const { BASE, SERIES, EXPECTED, SHOTS } = process.env;
const expected = readFileSync(EXPECTED, "utf8").split("\n").filter(Boolean);
mkdirSync(SHOTS, { recursive: true });

function check(ok, message) {
  if (!ok) {
    console.error(`FAILED: ${message}`);
    process.exit(1);
  }
}

// Before-page answers the server gave (any status), from its metrics.
async function beforePagesServed() {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  let n = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith('hourglass_pages_total{kind="before"')) n += Number(line.split(" ").pop());
  }
  return n;
}

async function scrollToTheBeginning(page, pass) {
  for (let i = 0; i < 500; i++) {
    const done = await page.evaluate(() => {
      window.scrollTo(0, document.body.scrollHeight);
      return document.getElementById("end").textContent.includes("beginning");
    });
    if (done) break;
    await page.waitForTimeout(50);
  }
  const shown = await page.$$eval("li.event code", (codes) => codes.map((c) => c.textContent));
  const status = await page.$eval("#status", (s) => s.textContent);
  if (shown.length !== expected.length) console.error(`status: ${status}`);
  check(shown.length === expected.length, `${pass}: ${shown.length} events shown, ${expected.length} expected`);
  for (let i = 0; i < shown.length; i++) {
    check(shown[i] === expected[i], `${pass}: event ${i} is ${shown[i]}, expected ${expected[i]}`);
  }
  await page.screenshot({ path: join(SHOTS, `${pass}.png`), fullPage: false });
  console.log(`${pass}: ${shown.length} events, newest first, exactly the series`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
  ],
});
// A persistent profile would be closer to a user's, but a context keeps its HTTP cache across reloads too.
const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
const page = await context.newPage();
page.on("pageerror", (e) => check(false, `page error: ${e}`));

const url = `${BASE}/?series=${SERIES}`;
const served0 = await beforePagesServed();
await page.goto(url);
await page.waitForSelector("li.event");
await scrollToTheBeginning(page, "first-pass");
const served1 = await beforePagesServed();
const walked = served1 - served0;
check(walked >= 10, `the first pass fetched ${walked} before pages, fewer than 10`);

await page.reload();
await page.waitForSelector("li.event");
await scrollToTheBeginning(page, "second-pass");
const served2 = await beforePagesServed();
check(served2 === served1, `the second pass reached the server for ${served2 - served1} before pages; all are final and cached`);
console.log(`pages: ${walked} before pages from the server on the first pass, ${served2 - served1} on the second`);

// A new event, sent while the page is open, shows at the top without a reload.
await page.evaluate(() => window.scrollTo(0, 0));
const marker = `live-${Date.now()}`;
const sent = Date.now();
const res = await fetch(`${BASE}/api/series/${SERIES}/events`, {
  method: "POST",
  headers: { "Content-Type": "application/x-ndjson" },
  body: JSON.stringify({ ts: Date.now(), marker }) + "\n",
});
check(res.status === 202, `ingest answered ${res.status}`);
await page.waitForFunction(
  (m) => document.querySelector("li.event code")?.textContent.includes(m),
  marker,
  { timeout: 10000 },
);
console.log(`live: the new event was at the top ${Date.now() - sent} ms after it was sent`);
await page.screenshot({ path: join(SHOTS, "live.png") });
await browser.close();
