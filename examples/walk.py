#!/usr/bin/env python3
"""Walks a series back in time through its pages' Link headers, newest event first, with a small HTTP cache on
disk: final pages (Cache-Control: immutable) are reused without asking the server again; others are revalidated
with If-None-Match. Run it twice and the second walk fetches only the pages that are not final yet.

    python3 examples/walk.py http://127.0.0.1:8080 SERIES [--limit N] [--cache DIR]

Standard library only. Prints one event per line (NDJSON) on stdout and what the cache did on stderr.
"""
import argparse
import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.request

LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([a-z]+)"?')


class Cache:
    """A disk cache of responses keyed by URL: body, ETag and whether the page is immutable."""

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.stats = {"network": 0, "cache": 0, "revalidated": 0}

    def _path(self, url):
        return os.path.join(self.folder, hashlib.sha256(url.encode()).hexdigest() + ".json")

    def get(self, url):
        path = self._path(url)
        stored = None
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored["immutable"]:
                self.stats["cache"] += 1
                return stored
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if stored and stored["etag"]:
            request.add_header("If-None-Match", stored["etag"])
        try:
            with urllib.request.urlopen(request) as response:
                entry = {
                    "body": response.read().decode(),
                    "etag": response.headers.get("ETag"),
                    "link": response.headers.get("Link") or "",
                    "immutable": "immutable" in (response.headers.get("Cache-Control") or ""),
                }
        except urllib.error.HTTPError as e:
            if e.code == 304 and stored:
                self.stats["revalidated"] += 1
                return stored
            raise SystemExit(f"{url}: {e.code} {e.read().decode()}")
        self.stats["network"] += 1
        with open(path, "w") as f:
            json.dump(entry, f)
        return entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("series")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many events (0: all)")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/hourglass-walk"))
    args = parser.parse_args()
    cache = Cache(args.cache)
    url = f"{args.base.rstrip('/')}/api/series/{args.series}/data"
    shown = 0
    while url:
        page = cache.get(url)
        for event in reversed(json.loads(page["body"])["events"]):
            print(json.dumps(event, separators=(",", ":")))
            shown += 1
            if args.limit and shown >= args.limit:
                url = None
                break
        else:
            links = {rel: target for target, rel in LINK.findall(page["link"])}
            url = args.base.rstrip("/") + links["prev"] if "prev" in links else None
    s = cache.stats
    print(f"{shown} events; pages: {s['network']} from the server, {s['cache']} from the cache without asking, "
          f"{s['revalidated']} revalidated (304)", file=sys.stderr)


if __name__ == "__main__":
    main()
