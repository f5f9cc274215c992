// The hourglass viewer: newest events first; scrolling down follows each page's `prev` link. Pages are fetched
// with the browser's default cache mode, so final pages (cached forever) come from the browser's own HTTP cache.
// The head is held open with `Prefer: wait` and `If-None-Match`, so new events appear at the top by themselves.
"use strict";

const $ = (id) => document.getElementById(id);
const list = $("events");
const state = { series: null, prev: null, loading: false, live: false, headTag: null, generation: 0 };

async function getJson(url, init) {
  const res = await fetch(url, { headers: { Accept: "application/json" }, ...init });
  if (res.status === 304) return { res, body: null };
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return { res, body: await res.json() };
}

// A page's block: one chunk (or part), its events newest first, each marked with its page for replacement.
// `fresh(text)` tells which events to highlight as new.
function block(page, fresh = () => false) {
  const frag = document.createDocumentFragment();
  for (const e of [...page.events].reverse()) {
    const li = document.createElement("li");
    const text = JSON.stringify(e);
    li.className = fresh(text) ? "event fresh" : "event";
    li.dataset.page = `${page.from}#${page.part}`;
    const t = document.createElement("time");
    t.textContent = typeof e.ts === "number" ? new Date(e.ts).toISOString() : String(e.ts);
    const code = document.createElement("code");
    code.textContent = text;
    li.append(t, code);
    frag.append(li);
  }
  return frag;
}

function setEnd() {
  $("end").textContent = state.prev ? "" : "the beginning of the series";
}

// Older pages, one at a time, while the end of the list is in view.
async function loadOlder() {
  if (state.loading || !state.prev) return;
  state.loading = true;
  const generation = state.generation;
  try {
    const { body } = await getJson(state.prev);
    if (generation !== state.generation) return;
    list.append(block(body));
    state.prev = body.prev;
    setEnd();
  } catch (e) {
    $("status").textContent = String(e);
  } finally {
    state.loading = false;
  }
  if (endInView()) loadOlder();
}

function endInView() {
  return $("end").getBoundingClientRect().top < window.innerHeight + 400;
}

// Shows the page at `url` (the head, or a point in time) and everything older on scroll.
async function show(url, live) {
  state.generation += 1;
  const generation = state.generation;
  list.replaceChildren();
  const { res, body } = await getJson(url, live ? { cache: "no-store" } : {});
  if (generation !== state.generation) return;
  list.append(block(body));
  state.prev = body.prev;
  state.live = live;
  state.headTag = live ? res.headers.get("ETag") : null;
  $("live").hidden = live;
  setEnd();
  if (live) follow(generation);
  loadOlder();
}

// The newest pages the list does not show yet, newest first: the head, then back along `prev` to the newest
// page shown (which is fetched again, as it may have grown).
async function newerPages(head) {
  const top = list.firstElementChild ? list.firstElementChild.dataset.page : null;
  const pages = [head];
  let page = head;
  while (top && `${page.from}#${page.part}` !== top && page.prev && pages.length < 50) {
    const shownFrom = top.split("#")[0];
    if (page.from < shownFrom) break;
    page = (await getJson(page.prev, { cache: "no-store" })).body;
    pages.push(page);
  }
  return pages;
}

// Holds a request on the head until it changes, then puts what is new at the top; again and again.
async function follow(generation) {
  while (generation === state.generation) {
    let res, body;
    try {
      const headers = { Accept: "application/json", Prefer: "wait=30" };
      if (state.headTag) headers["If-None-Match"] = state.headTag;
      ({ res, body } = await getJson(`/api/series/${state.series}/data`, { cache: "no-store", headers }));
    } catch (e) {
      $("status").textContent = "reconnecting…";
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (generation !== state.generation) return;
    $("status").textContent = "live";
    if (!body) continue;
    state.headTag = res.headers.get("ETag");
    const pages = await newerPages(body);
    if (generation !== state.generation) return;
    for (const page of pages.reverse()) {
      const key = `${page.from}#${page.part}`;
      const shown = new Set();
      for (const li of [...list.querySelectorAll(`li[data-page="${key}"]`)]) {
        shown.add(li.querySelector("code").textContent);
        li.remove();
      }
      list.prepend(block(page, (text) => !shown.has(text)));
    }
  }
}

async function timeline() {
  const nav = $("timeline");
  nav.replaceChildren();
  const { body: info } = await getJson(`/api/series/${state.series}`);
  if (!info.first_event) return;
  const w = info.chunk_seconds * 1000;
  const from = Math.floor(Date.parse(info.first_event) / w) * w;
  const to = (Math.floor(Date.parse(info.last_event) / w) + 1) * w;
  const step = Math.max(1, Math.ceil((to - from) / w / 120)) * w;
  const q = `from=${from / 1000}&to=${(from + Math.ceil((to - from) / step) * step) / 1000}&step=${step / 1000}`;
  const { body } = await getJson(`/api/series/${state.series}/histogram?${q}`);
  const max = Math.max(1, ...body.buckets.map((b) => b.count));
  for (const b of body.buckets) {
    const bar = document.createElement("button");
    bar.type = "button";
    bar.style.height = `${Math.max(2, (48 * b.count) / max)}px`;
    bar.title = `${b.start}: ${b.count} events`;
    const end = Date.parse(b.start) + step;
    bar.onclick = () => show(`/api/series/${state.series}/data/before/${stamp(end)}`, false);
    nav.append(bar);
  }
}

// A URL time: UTC YYYY_MM_DD_HH_MM_SS.
function stamp(ms) {
  return new Date(ms).toISOString().slice(0, 19).replace(/[-T:]/g, "_");
}

async function start() {
  const { body } = await getJson("/api/series");
  const names = body.series.map((s) => s.name);
  const wanted = new URLSearchParams(location.search).get("series");
  state.series = names.includes(wanted) ? wanted : names[0] || "default";
  const select = $("series");
  for (const n of names) select.append(new Option(n, n, false, n === state.series));
  select.onchange = () => { location.search = `?series=${encodeURIComponent(select.value)}`; };
  $("live").onclick = () => show(`/api/series/${state.series}/data`, true);
  // Scrolling near the end loads older pages; so does a resize that brings the end into view.
  const nearEnd = () => { if (endInView()) loadOlder(); };
  window.addEventListener("scroll", nearEnd, { passive: true });
  window.addEventListener("resize", nearEnd);
  await show(`/api/series/${state.series}/data`, true);
  timeline().catch((e) => { $("status").textContent = String(e); });
}

start().catch((e) => { $("status").textContent = String(e); });
