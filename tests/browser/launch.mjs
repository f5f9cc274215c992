// What the browser scripts share: Debian's Chromium started the one way, and a check that ends the run.
import { chromium } from "playwright-core";

export function check(ok, message) {
  if (!ok) {
    console.error(`FAILED: ${message}`);
    process.exit(1);
  }
}

// A browser and a page in a fresh context (its own HTTP cache, kept across reloads); a page error fails.
export async function open() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => check(false, `page error: ${e}`));
  return { browser, page };
}

// Scrolls to the end of the list until the viewer says it is the beginning of the series; the events shown.
export async function scrollToTheBeginning(page) {
  for (let i = 0; i < 500; i++) {
    const done = await page.evaluate(() => {
      window.scrollTo(0, document.body.scrollHeight);
      return document.getElementById("end").textContent.includes("beginning");
    });
    if (done) break;
    await page.waitForTimeout(50);
  }
  return page.$$eval("li.event code", (codes) => codes.map((c) => c.textContent));
}
