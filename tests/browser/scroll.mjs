// The viewer in Debian's Chromium, driven by playwright-core (tests/it/browser.rs starts it):
// scroll back to the beginning and check the events shown against the series, reload and scroll again and
// check from the server's /metrics that final pages came from the browser's cache, then send an event and
// wait for it at the top without a reload. Screenshots go to $SHOTS.
//
// Env: BASE (http://127.0.0.1:PORT), SERIES, EXPECTED (a file of the series' events, one JSON per line,
// newest first), SHOTS (a folder).
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { check, open, scrollToTheBeginning as scrollAll } from "./launch.mjs";

const { BASE, SERIES, EXPECTED, SHOTS } = process.env;
const expected = readFileSync(EXPECTED, "utf8").split("\n").filter(Boolean);
mkdirSync(SHOTS, { recursive: true });

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
  const shown = await scrollAll(page);
  const status = await page.$eval("#status", (s) => s.textContent);
  if (shown.length !== expected.length) console.error(`status: ${status}`);
  check(shown.length === expected.length, `${pass}: ${shown.length} events shown, ${expected.length} expected`);
  for (let i = 0; i < shown.length; i++) {
    check(shown[i] === expected[i], `${pass}: event ${i} is ${shown[i]}, expected ${expected[i]}`);
  }
  await page.screenshot({ path: join(SHOTS, `${pass}.png`), fullPage: false });
  console.log(`${pass}: ${shown.length} events, newest first, exactly the series`);
}

// A persistent profile would be closer to a user's, but a context keeps its HTTP cache across reloads too.
const { browser, page } = await open();

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
