// The hourglass viewer: newest events first; scrolling down follows each page's `prev` link. Pages are fetched
// with the browser's default cache mode, so final pages (cached forever) come from the browser's own HTTP cache.
// The head is held open with `Prefer: wait` and `If-None-Match`, so new events appear at the top by themselves.
// A filter (the box: `where=` terms and `q=` texts) and a field to group the timeline by live in the page's own
// URL, so a view can be shared and reloaded.
"use strict";

const $ = (id) => document.getElementById(id);
const list = $("events");
const state = {
  series: null, prev: null, loading: false, live: false, headTag: null, headUrl: null, generation: 0,
  filter: "", group: "",
};

// The box's text as query parameters: `field:value`, `a>=1`, `f?` are `where=` terms (quotes keep spaces in
// a value), anything else is a `q=` text ("quoted" for one with spaces).
function filterParams(text) {
  const words = [];
  let word = "", quoted = false;
  for (const c of text.trim()) {
    if (c === '"') quoted = !quoted;
    if (/\s/.test(c) && !quoted) {
      if (word) words.push(word);
      word = "";
    } else {
      word += c;
    }
  }
  if (word) words.push(word);
  const params = new URLSearchParams();
  for (const w of words) {
    if (/^[^"\s]+?(:|=|!=|<|>|\?$)/.test(w)) params.append("where", w);
    else params.append("q", w.replace(/^"(.*)"$/, "$1"));
  }
  return params;
}

// The box's text for a URL's filter parameters: the way back.
function filterText(params) {
  const q = (t) => (/\s/.test(t) ? `"${t}"` : t);
  return [...params.getAll("where"), ...params.getAll("q").map(q)].join(" ");
}

// A URL of the series' pages or ranges, with the filter.
function withFilter(url) {
  return state.filter ? `${url}${url.includes("?") ? "&" : "?"}${state.filter}` : url;
}

async function getJson(url, init) {
  const res = await fetch(url, { headers: { Accept: "application/json" }, ...init });
  if (res.status === 304) return { res, body: null };
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return { res, body: await res.json() };
}

// A page's block: one chunk (or part), its events newest first, each marked with its page for replacement.
// `fresh(text)` tells which events to highlight as new.
function block(page, fresh = () => false, events = page.events) {
  const frag = document.createDocumentFragment();
  for (const e of [...events].reverse()) {
    const li = document.createElement("li");
    const text = JSON.stringify(e);
    li.className = fresh(text) ? "event fresh" : "event";
    li.dataset.page = `${page.from}#${page.part}`;
    const t = document.createElement("time");
    t.textContent = typeof e.ts === "number" ? new Date(e.ts).toISOString() : String(e.ts);
    const code = document.createElement("code");
    code.textContent = text;
    // A click shows the event as indented JSON, and another hides it again.
    code.onclick = () => {
      const open = li.querySelector("pre");
      if (open) return open.remove();
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(e, null, 2);
      li.append(pre);
    };
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
  // Where the server sent the request (a filter is redirected to its one spelling): the URL to follow.
  state.headUrl = res.url;
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
      ({ res, body } = await getJson(state.headUrl, { cache: "no-store", headers }));
    } catch (e) {
      $("status").textContent = "reconnecting…";
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (generation !== state.generation) return;
    $("status").textContent = "live";
    if (!body) continue;
    state.headTag = res.headers.get("ETag");
    if (state.filter) {
      prependNewer(body);
      continue;
    }
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

// A filtered head's matches newer than the newest shown, put at the top (filtered pages are ranges, not chunks:
// the head's range moves as matches arrive, so it is not matched against the blocks shown).
function prependNewer(head) {
  const top = list.firstElementChild;
  const shown = new Set([...list.querySelectorAll("li.event code")].slice(0, 1000).map((c) => c.textContent));
  const newest = top ? top.querySelector("time").textContent : "";
  const fresh = head.events.filter((e) => {
    const t = typeof e.ts === "number" ? new Date(e.ts).toISOString() : String(e.ts);
    return t >= newest && !shown.has(JSON.stringify(e));
  });
  if (fresh.length) list.prepend(block(head, () => true, fresh));
}

const COLOURS = ["#2f6fdf", "#e8833a", "#3aa55d", "#c94f6d", "#8e6fd8", "#9aa1a9"];

// Counts per step over the whole series as bars (stacked by the values of the group field, when one is set),
// with a time axis; a click on a bar shows the page that ends with its step.
async function timeline() {
  const nav = $("timeline");
  nav.replaceChildren();
  $("axis").replaceChildren();
  $("legend").replaceChildren();
  const { body: info } = await getJson(`/api/series/${state.series}`);
  if (!info.first_event) return;
  const w = info.chunk_seconds * 1000;
  const from = Math.floor(Date.parse(info.first_event) / w) * w;
  const to = (Math.floor(Date.parse(info.last_event) / w) + 1) * w;
  const step = Math.max(1, Math.ceil((to - from) / w / 120)) * w;
  const end = from + Math.ceil((to - from) / step) * step;
  let q = `from=${from / 1000}&to=${end / 1000}&step=${step / 1000}`;
  if (state.group) q += `&group_by=${encodeURIComponent(state.group)}&top=5`;
  const { body } = await getJson(withFilter(`/api/series/${state.series}/histogram?${q}`));
  const max = Math.max(1, ...body.buckets.map((b) => b.count));
  const names = body.buckets.length && body.buckets[0].groups ? Object.keys(body.buckets[0].groups) : [];
  for (const b of body.buckets) {
    const bar = document.createElement("button");
    bar.type = "button";
    bar.style.height = `${Math.max(2, (48 * b.count) / max)}px`;
    bar.title = `${b.start}: ${b.count} events`;
    if (b.groups) {
      bar.className = "stacked";
      const parts = [...names.map((n) => [n, b.groups[n]]), ["other", b.other + b.missing]];
      bar.title += parts.map(([n, c]) => `\n${n}: ${c}`).join("");
      parts.forEach(([, c], i) => {
        if (!c) return;
        const seg = document.createElement("span");
        seg.style.height = `${(100 * c) / Math.max(1, b.count)}%`;
        seg.style.background = COLOURS[Math.min(i, COLOURS.length - 1)];
        bar.append(seg);
      });
    }
    const stepEnd = Date.parse(b.start) + step;
    bar.onclick = () => show(withFilter(`/api/series/${state.series}/data/before/${stamp(stepEnd)}`), false);
    nav.append(bar);
  }
  [...names, "other"].forEach((n, i) => {
    if (!state.group) return;
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLOURS[Math.min(i, COLOURS.length - 1)];
    item.append(swatch, n);
    $("legend").append(item);
  });
  // Five labels along the axis, at the start, the end and between.
  const span = end - from;
  const label = (t) => {
    const iso = new Date(t).toISOString();
    return span > 2 * 86400000 ? iso.slice(0, 10) : span > 3600000 ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 19);
  };
  for (let i = 0; i <= 4; i++) {
    const tick = document.createElement("span");
    tick.style.left = `${i * 25}%`;
    tick.textContent = label(from + (span * i) / 4);
    $("axis").append(tick);
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
  const params = new URLSearchParams(location.search);
  const filter = new URLSearchParams();
  for (const key of ["where", "q"]) for (const v of params.getAll(key)) filter.append(key, v);
  state.filter = filter.toString();
  state.group = params.get("group_by") || "";
  $("filter").value = filterText(filter);
  $("group").value = state.group;
  // A new filter or group goes into the page's URL, then the view starts again from the head.
  $("query").onsubmit = (ev) => {
    ev.preventDefault();
    const next = filterParams($("filter").value);
    const group = $("group").value.trim();
    const search = new URLSearchParams({ series: state.series });
    for (const [k, v] of next) search.append(k, v);
    if (group) search.set("group_by", group);
    history.pushState(null, "", `?${search}`);
    state.filter = next.toString();
    state.group = group;
    show(withFilter(`/api/series/${state.series}/data`), true).catch((e) => { $("status").textContent = String(e); });
    timeline().catch((e) => { $("status").textContent = String(e); });
  };
  window.onpopstate = () => location.reload();
  $("live").onclick = () => show(withFilter(`/api/series/${state.series}/data`), true);
  // Scrolling near the end loads older pages; so does a resize that brings the end into view.
  const nearEnd = () => { if (endInView()) loadOlder(); };
  window.addEventListener("scroll", nearEnd, { passive: true });
  window.addEventListener("resize", nearEnd);
  await show(withFilter(`/api/series/${state.series}/data`), true);
  timeline().catch((e) => { $("status").textContent = String(e); });
}

start().catch((e) => { $("status").textContent = String(e); });
