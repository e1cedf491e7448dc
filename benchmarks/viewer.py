"""Slide viewer under load: time to first tile and Deep Zoom tiles/s for 8 browser-like clients.

The viewer (`histoscope view SLIDE --port 0`) runs in its own process, as a user runs it;
the clients are threads of this process on 127.0.0.1, each with one keep-alive connection
(``http.client``), behaving like a browser session: the page, ``/api/info``,
``/api/overlays``, ``/slide.dzi``, then ``--views`` viewports of 1280 x 800 screen pixels at
random positions and zoom levels (from the overview to full resolution), fetching every
tile a viewport needs. Figures per slide:

* start-up: seconds from launching the command to ``/api/info`` answering;
* first tile: latency of the first tile request on the cold server (no tile cached);
* tiles/s over all clients, latency p50/p95/p99 per tile, errors (must be 0), bytes served.

Usage::

    .venv/bin/python benchmarks/viewer.py [--clients 8] [--views 40] [--size 40000] [--quiet]

The synthetic slide (``--size`` px square, 0.5 um/px) is generated once into ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
TILE = 254


def _start(slide: Path) -> tuple[subprocess.Popen, str, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "histoscope.cli.main", "view", str(slide), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"(http://[\d.]+:\d+)/", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"the viewer did not start: {line!r} {proc.stderr.read()}")
    url = m.group(1)
    while True:
        try:
            c = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=30)
            c.request("GET", "/api/info")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.01)
    return proc, url, time.perf_counter() - t0


def _levels(dims: tuple[int, int]) -> list[tuple[int, int]]:
    """Deep Zoom level sizes (level 0 = 1 x 1 px), as OpenSeadragon and openslide count them."""
    w, h = dims
    sizes = [(w, h)]
    while w > 1 or h > 1:
        w, h = max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))
        sizes.append((w, h))
    return sizes[::-1]


def _viewport_tiles(rng: random.Random, sizes: list[tuple[int, int]], screen=(1280, 800)) -> list[tuple[int, int, int]]:
    """Tiles of one random viewport at a random zoom from the overview to full resolution."""
    first = next(i for i, (w, h) in enumerate(sizes) if w >= screen[0] / 2 or h >= screen[1] / 2)
    level = rng.randint(first, len(sizes) - 1)
    w, h = sizes[level]
    x0 = rng.randint(0, max(0, w - screen[0]))
    y0 = rng.randint(0, max(0, h - screen[1]))
    cols = range(x0 // TILE, min(math.ceil(w / TILE), (x0 + screen[0]) // TILE + 1))
    rows = range(y0 // TILE, min(math.ceil(h / TILE), (y0 + screen[1]) // TILE + 1))
    return [(level, c, r) for r in rows for c in cols]


def _client(url: str, sizes, views: int, seed: int, out: dict, lock: threading.Lock) -> None:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    rng = random.Random(seed)
    lat, errors, nbytes = [], 0, 0

    def get(path: str) -> int:
        nonlocal errors, nbytes
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        nbytes += len(body)
        if r.status != 200:
            errors += 1
        return r.status

    for path in ("/", "/static/viewer.js", "/osd/openseadragon.min.js", "/api/info", "/api/overlays", "/slide.dzi"):
        get(path)
    for _ in range(views):
        for level, c, r in _viewport_tiles(rng, sizes):
            t = time.perf_counter()
            get(f"/slide_files/{level}/{c}_{r}.jpeg")
            lat.append(time.perf_counter() - t)
    conn.close()
    with lock:
        out["latencies"] += lat
        out["errors"] += errors
        out["bytes"] += nbytes


def bench(slide: Path, clients: int, views: int, seed: int) -> dict:
    proc, url, startup = _start(slide)
    try:
        u = urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        sizes = _levels(tuple(info["dimensions"]))
        top = len(sizes) - 1
        w, h = sizes[top]
        t = time.perf_counter()
        conn.request("GET", f"/slide_files/{top}/{w // TILE // 2}_{h // TILE // 2}.jpeg")
        r = conn.getresponse()
        r.read()
        first_tile = time.perf_counter() - t
        assert r.status == 200, r.status
        conn.close()
        out = {"latencies": [], "errors": 0, "bytes": 0}
        lock = threading.Lock()
        threads = [threading.Thread(target=_client, args=(url, sizes, views, seed + i, out, lock)) for i in range(clients)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    lat = sorted(out["latencies"])
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    return {
        "slide": slide.name, "dimensions": info["dimensions"], "deep_zoom_levels": len(sizes),
        "startup_s": round(startup, 3), "first_tile_ms": round(first_tile * 1000, 1),
        "clients": clients, "views_per_client": views, "tiles": len(lat), "seconds": round(wall, 2),
        "tiles_per_s": round(len(lat) / wall, 1), "p50_ms": round(q(0.50), 1), "p95_ms": round(q(0.95), 1), "p99_ms": round(q(0.99), 1),
        "errors": out["errors"], "megabytes": round(out["bytes"] / 1e6, 1), "cpu_count": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--views", type=int, default=40, help="viewports per client")
    ap.add_argument("--size", type=int, default=40_000, help="side of the synthetic slide in pixels")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from histoscope.datasets import synthetic_slide
    from histoscope.viewer import find_openseadragon

    find_openseadragon()  # a clear message before anything runs
    slides = []
    if CMU.is_file():
        slides.append(CMU)
    else:
        print(f"note: {CMU} not found; benchmarking the synthetic slide only")
    synth = args.out / f"synthetic-{args.size}.tiff"
    if not synth.is_file():
        synthetic_slide(synth, width=args.size, height=args.size, mpp=0.5, seed=0, verbose=not args.quiet)
    slides.append(synth)
    rows = [bench(s, args.clients, args.views, args.seed) for s in slides]
    (args.out / "viewer.json").write_text(json.dumps(rows, indent=2))
    print(f"{'slide':32} {'start s':>8} {'1st tile ms':>11} {'tiles':>6} {'tiles/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for r in rows:
        print(f"{r['slide']:32} {r['startup_s']:8.2f} {r['first_tile_ms']:11.1f} {r['tiles']:6d} {r['tiles_per_s']:8.1f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['p99_ms']:7.1f} {r['errors']:6d}")
    print(f"({args.clients} clients x {args.views} viewports of 1280 x 800 px on 127.0.0.1, {os.cpu_count()} CPU cores) -> {args.out / 'viewer.json'}")


if __name__ == "__main__":
    main()
