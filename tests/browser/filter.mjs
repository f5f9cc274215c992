// The viewer's filter box, grouped timeline and event details in Debian's Chromium, driven by playwright-core
// (tests/it/browser.rs starts it): a filtered view from its URL shows exactly the matches, newest first; a
// filter typed into the box goes into the page's URL and survives a reload; a group-by field stacks the
// timeline's bars by value, with a legend and a time axis; a click shows an event as indented JSON.
//
// Env: BASE, SERIES, FILTER (a where= term), EXPECTED (the matches, one JSON per line, newest first),
// TYPED (a filter to type), TYPED_FIRST (text the first event shown for it contains), GROUP (a field),
// GROUPS (how many values it has), SHOTS (a folder).
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { check, open, scrollToTheBeginning as shownAll } from "./launch.mjs";

const { BASE, SERIES, FILTER, EXPECTED, TYPED, TYPED_FIRST, GROUP, GROUPS, SHOTS } = process.env;
const expected = readFileSync(EXPECTED, "utf8").split("\n").filter(Boolean);
mkdirSync(SHOTS, { recursive: true });

const { browser, page } = await open();

// A shared view: the filter in the URL.
await page.goto(`${BASE}/?series=${SERIES}&where=${encodeURIComponent(FILTER)}`);
await page.waitForSelector("li.event");
check((await page.inputValue("#filter")) === FILTER, "the box shows the URL's filter");
let shown = await shownAll(page);
check(shown.length === expected.length, `${shown.length} events shown, ${expected.length} matches expected`);
for (let i = 0; i < shown.length; i++) {
  check(shown[i] === expected[i], `event ${i} is ${shown[i]}, expected ${expected[i]}`);
}
console.log(`url filter: ${shown.length} matches, newest first, exactly`);

// A filter typed into the box, and a field to group by: both go into the URL and survive a reload.
await page.evaluate(() => window.scrollTo(0, 0));
await page.fill("#filter", TYPED);
await page.fill("#group", GROUP);
await page.press("#filter", "Enter");
await page.waitForFunction((t) => document.querySelector("li.event code")?.textContent.includes(t), TYPED_FIRST);
const search = new URL(page.url()).searchParams;
check(search.get("group_by") === GROUP, `group_by in the URL: ${page.url()}`);
check(search.getAll("where").length + search.getAll("q").length >= 2, `the typed filter in the URL: ${page.url()}`);
const typedShown = await shownAll(page);
await page.reload();
await page.waitForSelector("li.event");
check((await page.inputValue("#filter")) !== "", "the filter is back after a reload");
const again = await shownAll(page);
check(JSON.stringify(again) === JSON.stringify(typedShown), "a reload shows the same events");
console.log(`typed filter: ${typedShown.length} events, the same after a reload`);

// The timeline: bars stacked by the group's values, a legend naming them, an axis with times.
await page.waitForSelector("#timeline button.stacked span");
const stacks = await page.$$eval("#timeline button.stacked", (bars) => Math.max(...bars.map((b) => b.children.length)));
const legend = await page.$$eval("#legend span", (items) => items.map((i) => i.textContent));
const axis = await page.$$eval("#axis span", (ticks) => ticks.map((t) => t.textContent));
check(stacks >= 2, `bars have at most ${stacks} segments`);
check(legend.length === Number(GROUPS) + 1, `legend: ${legend}`);
check(axis.length === 5 && axis.every((t) => /\d/.test(t)), `axis: ${axis}`);
console.log(`timeline: up to ${stacks} segments a bar, legend ${legend.join(", ")}, axis ${axis.join(" | ")}`);

// An event on demand as readable JSON, and hidden again.
await page.evaluate(() => window.scrollTo(0, 0));
await page.click("li.event code");
const pretty = await page.$eval("li.event pre", (p) => p.textContent);
check(pretty.includes("\n  \""), `indented JSON: ${pretty}`);
await page.click("li.event code");
check((await page.$("li.event pre")) === null, "a second click hides it");
await page.screenshot({ path: join(SHOTS, "filtered.png") });
console.log("details: an event shows as indented JSON and hides again");
await browser.close();
