"""Load test of ``histoscope serve``: requests per second and latency under concurrent clients.

Starts ``histoscope serve --model MODEL --port 0`` as a separate process on 127.0.0.1 (so
the clients do not share its interpreter), waits for ``GET /health``, then ``--clients``
threads, each with one keep-alive ``http.client`` connection, send ``--requests`` requests
in all: ``POST /predict`` with an ``.npy`` batch of ``--batch`` patches of real tissue at
the model's input size (8 different bodies, in turn). The clients share ``--warmup``
untimed requests, then start together; every timed request's latency (send to last byte
of the answer) is recorded, and one that does not answer HTTP 200 with probabilities for
the whole batch counts as an error. Writes ``benchmarks/out/serve.json`` and prints a
table. Usage::

    .venv/bin/python benchmarks/serve.py [--requests 2000] [--clients 8] [--model mitosis_detector] [--batch 1] [--quiet]

``--url http://127.0.0.1:PORT`` measures a server that is already running instead.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def start_server(model: str, *, threads: int | None = None, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``histoscope serve`` on a free port of 127.0.0.1, in its own process; returns it and its URL."""
    cmd = [sys.executable, "-m", "histoscope.cli.main", "serve", "--model", model, "--host", "127.0.0.1", "--port", "0"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()  # "serving NAME at http://127.0.0.1:PORT (...)"
    if " at http://" not in line:
        proc.kill()
        raise RuntimeError(f"histoscope serve did not start: {line}{proc.stderr.read()}")
    url = line.split(" at ")[1].split()[0]
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = request(url, "GET", "/health")
            if status == 200:
                return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"histoscope serve at {url} did not answer /health within {timeout} s")
        time.sleep(0.05)


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def bodies(size: int, batch: int, *, n: int = 8) -> list[bytes]:
    """``n`` different ``.npy`` batches of real stained tissue (scikit-image's IHC image)."""
    from skimage import data

    img = data.immunohistochemistry()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ys, xs = rng.integers(0, img.shape[0] - size, batch), rng.integers(0, img.shape[1] - size, batch)
        buf = io.BytesIO()
        np.save(buf, np.stack([img[y : y + size, x : x + size] for y, x in zip(ys, xs)]), allow_pickle=False)
        out.append(buf.getvalue())
    return out


def load(url: str, payloads: list[bytes], *, batch: int, requests: int, clients: int, warmup: int, verbose: bool) -> dict:
    """``clients`` threads send ``warmup`` untimed requests, meet at a barrier, then ``requests`` timed ones."""
    from tqdm.auto import tqdm

    u = urlsplit(url)
    headers = {"Content-Type": "application/x-npy"}
    lock = threading.Lock()
    taken = [0]
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    bar = tqdm(total=requests, desc="requests", disable=not verbose)

    def take() -> int | None:
        with lock:
            if taken[0] >= requests:
                return None
            taken[0] += 1
            return taken[0]

    def post(conn: http.client.HTTPConnection, i: int) -> tuple[http.client.HTTPConnection, str | None]:
        try:
            conn.request("POST", "/predict", body=payloads[i % len(payloads)], headers=headers)
            r = conn.getresponse()
            answer = r.read()
            ok = r.status == 200 and len(json.loads(answer)["probabilities"]) == batch
            return conn, None if ok else f"HTTP {r.status}: {answer[:200]!r}"
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            conn.close()  # a fresh connection for the next request
            return http.client.HTTPConnection(u.hostname, u.port, timeout=60), f"{exc.__class__.__name__}: {exc}"

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        for w in range(k, warmup, clients):  # this client's share of the warm-up
            conn, _ = post(conn, w)
        start.wait()
        while (i := take()) is not None:
            t0 = time.perf_counter()
            conn, problem = post(conn, i)
            dt = time.perf_counter() - t0
            with lock:
                if problem is None:
                    latencies.append(dt)
                else:
                    errors.append(problem)
                bar.update(1)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    bar.close()
    return {"latencies": latencies, "errors": errors, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="timed requests in all")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads (one keep-alive connection each)")
    ap.add_argument("--model", default="mitosis_detector", help="bundled model or checkpoint to serve")
    ap.add_argument("--batch", type=int, default=1, help="patches per request")
    ap.add_argument("--warmup", type=int, default=50, help="untimed requests first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server (histoscope serve --threads)")
    ap.add_argument("--url", default=None, help="measure this running server instead of starting one")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args()
    if min(args.requests, args.clients, args.batch) < 1 or args.warmup < 0:
        ap.error("--requests, --clients and --batch must be at least 1, --warmup at least 0")

    load_before = os.getloadavg()  # other work on the machine skews the figures: recorded with them
    proc = None
    url = args.url
    if url is None:
        t0 = time.perf_counter()
        proc, url = start_server(args.model, threads=args.threads)
        startup = time.perf_counter() - t0
    else:
        startup = None
    try:
        status, raw = request(url, "GET", "/info")
        info = json.loads(raw) if status == 200 else {}
        size = int(info.get("input_size") or 64)
        res = load(url, bodies(size, args.batch), batch=args.batch, requests=args.requests, clients=args.clients, warmup=args.warmup, verbose=not args.quiet)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    lat = np.asarray(res["latencies"]) * 1000
    ok = len(lat)
    pct = {f"p{q}": round(float(np.percentile(lat, q)), 2) if ok else None for q in (50, 95, 99)}
    result = {
        "benchmark": "histoscope serve: POST /predict (.npy batch) from concurrent keep-alive clients",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "server": url if args.url else f"histoscope serve --model {args.model} (uvicorn, separate process, 127.0.0.1)",
        "model": info.get("name", args.model),
        "input_size": size,
        "requests": args.requests,
        "clients": args.clients,
        "batch": args.batch,
        "server_threads": args.threads,
        "warmup": args.warmup,
        "server_startup_s": None if startup is None else round(startup, 2),
        "wall_s": round(res["wall_s"], 3),
        "requests_per_s": round(args.requests / res["wall_s"], 1),
        "patches_per_s": round(ok * args.batch / res["wall_s"], 1),
        "latency_ms": {**pct, "mean": round(float(lat.mean()), 2) if ok else None, "max": round(float(lat.max()), 2) if ok else None},
        "errors": len(res["errors"]),
        "first_errors": res["errors"][:5],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(result, indent=2))

    rows = [
        ("server", result["server"]),
        ("requests x batch", f"{args.requests} x {args.batch} ({args.clients} clients, {args.warmup} warm-up)"),
        ("wall time", f"{result['wall_s']:.2f} s"),
        ("requests/s", f"{result['requests_per_s']:.1f}"),
        ("patches/s", f"{result['patches_per_s']:.1f}"),
        *((f"latency {k}", f"{v:.2f} ms") for k, v in result["latency_ms"].items() if v is not None),
        ("errors", str(result["errors"])),
    ]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    print(f"-> {out / 'serve.json'}")


if __name__ == "__main__":
    main()
