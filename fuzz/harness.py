"""Fuzz histoscope's readers with mutated real slides and images.

Every case takes one seed file (:mod:`fuzz.mutators`), mutates it (truncation, bit flips,
overwritten bytes, a wrong magic number, spliced bytes, a lying header field, a declared
size of zero or 10^6 x 10^6 and beyond) and feeds it to one target:

``slide``
    :func:`histoscope.open_slide`, ``info()``, ``read_region`` at a random place, the
    low-resolution read of :func:`~histoscope.slide.tissue_mask`, :func:`~histoscope.tiles.tile_grid`
    and :func:`~histoscope.tiles.read_tile` of the first tiles, then the stain functions
    (Macenko fit + transform, HED deconvolution round trip, HED augmentation) on a tile.
``upload``
    ``POST /predict`` of a real uvicorn server on 127.0.0.1 (:func:`histoscope.serve.serve_in_thread`,
    the bundled ``mitosis_detector``), with the seed's content type or a wrong one.

A case passes when it finishes or raises one of histoscope's own documented exceptions
(:class:`histoscope.exceptions.HistoscopeError` and its subclasses), and, for uploads,
when the server answers 200 or a 4xx with a JSON ``error``. It fails on any other
exception, a 5xx, a connection error, a run over ``--timeout`` seconds of CPU (5 by default,
measured with ITIMER_PROF so that a machine busy with other work does not make hangs; a
wall-clock backstop of 4 x the timeout catches a case blocked without using CPU): the worker
is killed by the timer's signal, even inside C code, and the case is tried once more in a
fresh worker before it counts as a hang), a crash (the worker dies on a signal), or memory: each worker runs
under an address-space limit (its size after warm-up + 3 GiB), so a file that makes a
reader allocate its declared 10^6 x 10^6 pixels fails with MemoryError, and a case that
raises the worker's peak resident memory by more than 1 GiB is reported too.

Case ``i`` of master seed ``s`` is always the same file: replay one with ``--case i``.

Usage::

    python -m fuzz.harness --cases 100000 --workers 2 --out benchmarks/out/fuzz   # the long run
    python -m fuzz.harness --cases 2000 --quiet                                    # a short one
    python -m fuzz.harness --case 4711                                             # replay one case
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python fuzz/harness.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.mutators import Seed, find_seeds, mutate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = ROOT.parent / "shared" / "data"
#: Share of cases per target.
TARGET_WEIGHTS = {"slide": 0.7, "upload": 0.3}
UPLOAD_MAX_PIXELS = 1024 * 1024  # the fuzzed server's --max-pixels
MEMORY_STEP = 1 << 30  # a case may raise the worker's peak RSS by at most this
ADDRESS_MARGIN = 3 << 30  # address space a worker may add after warm-up
WRONG_TYPES = ("image/png", "image/jpeg", "image/tiff", "application/x-npy", "text/plain", "", "image/gif", "application/octet-stream")


@dataclass
class Case:
    index: int
    target: str
    seed: Seed
    mutation: str
    data: bytes
    content_type: str | None = None

    @property
    def label(self) -> str:
        return f"case {self.index}: {self.target} <- {self.mutation}({self.seed.name})"


def make_case(index: int, seeds: list[Seed], master: int = 0) -> Case:
    """Case ``index``: the same target, seed, mutation and bytes for the same ``master`` seed."""
    rng = random.Random(f"{master}:{index}")
    target = rng.choices(list(TARGET_WEIGHTS), weights=list(TARGET_WEIGHTS.values()))[0]
    pool = [s for s in seeds if s.kind == target]
    seed = rng.choice(pool)
    name, data = mutate(seed, rng)
    ctype = seed.content_type
    if target == "upload" and rng.random() < 0.15:
        ctype = rng.choice(WRONG_TYPES)
    return Case(index, target, seed, name, data, ctype)


# ---------------------------------------------------------------------- targets
def run_slide(path: Path, rng: random.Random) -> str:
    """open_slide -> read_region -> tissue mask (a low-resolution read of the whole slide) -> tiles -> stain; returns what it reached."""
    import warnings

    import numpy as np

    from histoscope import open_slide
    from histoscope.slide import tissue_mask
    from histoscope.tiles import TileSpec, read_tile, tile_grid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = open_slide(path)
        try:
            s.info()  # metadata, the file's own resolution, associated image names
            if s.mpp is None:  # what open_slide(path, mpp=0.5) does, without opening the file twice
                s._mpp_override = (0.5, 0.5)
            W, H = s.dimensions
            region = s.read_region((rng.randrange(max(W, 1)), rng.randrange(max(H, 1))), (192, 192), level=0)
            mask = tissue_mask(s)
            table = tile_grid(s, TileSpec(size=128, mpp=1.0), tissue=mask, min_tissue=0.1)
            tile = region
            for _, row in table.head(2).iterrows():
                tile = read_tile(s, row)
            run_stain(np.ascontiguousarray(tile), rng)
            return "stain"
        finally:
            s.close()


def run_stain(tile: Any, rng: random.Random) -> None:
    from histoscope.stain import MacenkoNormalizer, augment_hed, hed_to_rgb, rgb_to_hed

    MacenkoNormalizer(workers=1).fit(tile).transform(tile)
    hed_to_rgb(rgb_to_hed(tile))
    augment_hed(tile, rng=rng.randrange(2**31))


def run_upload(conn: Any, case: Case) -> str:
    """POST the mutated body; a 5xx, a non-JSON answer or a refusal without ``error`` fails.

    The server may close a kept-alive connection after a refusal it did not read the body of
    (413): a send that finds the connection closed is retried once on a new one.
    """
    import http.client

    headers = {} if case.content_type is None or case.content_type == "" else {"Content-Type": case.content_type}
    for attempt in (0, 1):
        try:
            conn.request("POST", "/predict", body=case.data, headers=headers)
            resp = conn.getresponse()
            break
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            if attempt:
                raise
    body = resp.read()
    if resp.status >= 500:
        raise AssertionError(f"server answered {resp.status}: {body[:300]!r}")
    answer = json.loads(body)
    if resp.status >= 400 and "error" not in answer:
        raise AssertionError(f"refusal {resp.status} without an error message: {body[:300]!r}")
    if resp.status == 200 and "probabilities" not in answer:
        raise AssertionError(f"200 without probabilities: {body[:300]!r}")
    return str(resp.status)


# ---------------------------------------------------------------------- one worker
class Worker:
    """Runs cases in this process: seeds, a temporary folder, the server for uploads."""

    def __init__(self, shared: Path | None, work: Path, master: int, timeout: float, upload: bool = True) -> None:
        self.seeds = find_seeds(shared, work / "seeds")
        self.master = master
        self.timeout = timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="histoscope-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        self.server = self.conn = self.url = None
        if upload:
            import http.client

            from histoscope.serve import serve_in_thread

            # 1 megapixel at most: the default (8192^2) lets a valid upload of 16,000 patches
            # take a minute of CPU, which is capacity, not the parsing this harness tests
            self.server, self.url = serve_in_thread("mitosis_detector", log_level="critical", max_pixels=UPLOAD_MAX_PIXELS)
            host, port = self.url.removeprefix("http://").split(":")
            self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout + 5)

    def close(self) -> None:
        import shutil

        if self.conn is not None:
            self.conn.close()
        if self.server is not None:
            self.server.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, case: Case) -> tuple[str, str | None]:
        """``(outcome, failure)``: outcome "ok:<stage>" / "refused:<ErrorClass>" / HTTP status; failure a traceback."""
        from histoscope.exceptions import HistoscopeError

        rng = random.Random(f"run:{self.master}:{case.index}")
        try:
            if case.target == "slide":
                path = self.tmp / f"case{case.seed.suffix}"
                path.write_bytes(case.data)
                try:
                    return "ok:" + run_slide(path, rng), None
                finally:
                    path.unlink(missing_ok=True)
            return "http:" + self._upload(case), None
        except HistoscopeError as exc:
            return f"refused:{type(exc).__name__}", None
        except MemoryError:
            return "memory", f"{case.label}\nMemoryError (address-space limit reached)\n{traceback.format_exc()}"
        except Exception as exc:
            return f"unexpected:{type(exc).__name__}", f"{case.label}\n{traceback.format_exc()}"

    def _upload(self, case: Case) -> str:
        import http.client

        try:
            return run_upload(self.conn, case)
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()  # the next case reconnects
            raise


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _worker_main(args: dict[str, Any], start: int, stop: int, current: Any, done: Any, results: Any) -> None:
    """Process entry: run cases [start, stop), report failures through ``results``."""
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # a hang kills the worker, even inside C code
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # it logs every corrupt tag it meets
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    log = os.open(Path(args["work"]) / f"worker-{start}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)  # libtiff / libjpeg complain on stderr about every corrupt file
    import torch

    torch.set_num_threads(1)
    w = Worker(Path(args["shared"]) if args["shared"] else None, Path(args["work"]), args["master"], args["timeout"], upload=args["upload"])
    # warm up: import every target's modules, run one case, then cap the address space
    import histoscope.slide  # noqa: F401
    import histoscope.stain  # noqa: F401
    import histoscope.tiles  # noqa: F401  (imported for the warm-up)

    w.run(make_case(0, w.seeds, args["master"]))
    limit = _vm_kib("VmSize") * 1024 + ADDRESS_MARGIN
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    slowest, wall = (0.0, -1), 0.0
    try:
        for i in range(start, stop):
            case = make_case(i, w.seeds, args["master"])
            if not args["upload"] and case.target == "upload":
                continue
            current.value = i
            hwm = _vm_kib("VmHWM")
            t0, c0 = time.perf_counter(), time.process_time()
            signal.setitimer(signal.ITIMER_PROF, args["timeout"])  # CPU seconds of this process
            signal.setitimer(signal.ITIMER_REAL, 4 * args["timeout"])  # blocked without CPU
            outcome, failure = w.run(case)
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            slowest = max(slowest, (dc, i))
            wall = max(wall, dt)
            grew = (_vm_kib("VmHWM") - hwm) * 1024
            if failure is None and grew > MEMORY_STEP:
                outcome, failure = "memory", f"{case.label}\npeak resident memory rose by {grew / 2**20:.0f} MiB"
            results.put(("case", i, f"{case.target}|{case.mutation.split('+')[0]}|{outcome}", failure, dt))
            with done.get_lock():
                done.value += 1
    finally:
        results.put(("stats", start, {"slowest_s": slowest[0], "slowest_case": slowest[1], "slowest_wall_s": wall, "peak_rss_mb": _vm_kib("VmHWM") / 1024}))
        w.close()


# ---------------------------------------------------------------------- the run
def fuzz(
    cases: int,
    *,
    first: int = 0,
    workers: int = 2,
    master: int = 0,
    timeout: float = 5.0,
    shared: Path | None = DEFAULT_SHARED,
    work: Path = ROOT / "benchmarks" / "out" / "fuzz",
    upload: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run cases ``first .. first + cases - 1`` on ``workers`` processes; return the summary."""
    from tqdm.auto import tqdm

    work.mkdir(parents=True, exist_ok=True)
    shared = shared if shared is not None and Path(shared).is_dir() else None
    args = {"shared": str(shared) if shared else None, "work": str(work), "master": master, "timeout": timeout, "upload": upload}
    find_seeds(shared, work / "seeds")  # generate the seeds once, before the workers read them
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    done = ctx.Value("q", 0)
    bounds = [first + cases * k // workers for k in range(workers + 1)]
    pending = [(bounds[k], bounds[k + 1]) for k in range(workers) if bounds[k] < bounds[k + 1]]
    running: list[tuple[Any, Any, int, int]] = []
    failures: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    stats: list[dict[str, Any]] = []
    retried: set[int] = set()
    t0 = time.perf_counter()

    def launch(a: int, b: int) -> None:
        cur = ctx.Value("q", a)
        p = ctx.Process(target=_worker_main, args=(args, a, b, cur, done, results), daemon=True)
        p.start()
        running.append((p, cur, a, b))

    def drain() -> None:
        import queue

        while True:
            try:
                msg = results.get(timeout=0.05)
            except queue.Empty:
                return
            if msg[0] == "case":
                counts[msg[2]] += 1
                if msg[3] is not None:
                    failures.append({"case": msg[1], "outcome": msg[2].rsplit("|", 1)[1], "detail": msg[3]})
            else:
                stats.append(msg[2])

    for a, b in pending:
        launch(a, b)
    with tqdm(total=cases, desc="fuzz cases", unit="case", disable=not verbose) as bar:
        while running:
            drain()
            bar.n = done.value
            bar.refresh()
            for entry in list(running):
                p, cur, a, b = entry
                if p.is_alive():
                    continue
                p.join()
                running.remove(entry)
                if p.exitcode == 0:
                    continue
                i = cur.value
                sig = -p.exitcode if p.exitcode < 0 else None
                if sig in (signal.SIGPROF, signal.SIGALRM) and i not in retried:
                    retried.add(i)  # a slow moment of a loaded machine, or a real hang: try once more alone
                    launch(i, i + 1)
                else:
                    kind = "hang" if sig in (signal.SIGPROF, signal.SIGALRM) else f"crash (signal {sig})" if sig else f"worker exit {p.exitcode}"
                    failures.append({"case": i, "outcome": kind, "detail": make_case(i, find_seeds(shared, work / "seeds"), master).label})
                    with done.get_lock():
                        done.value += 1
                if i + 1 < b:
                    launch(i + 1, b)
            time.sleep(0.05)
        drain()
        bar.n = done.value
        bar.refresh()
    elapsed = time.perf_counter() - t0
    for f in failures:  # keep the failing files to look at
        case = make_case(f["case"], find_seeds(shared, work / "seeds"), master)
        (work / "failures").mkdir(exist_ok=True)
        (work / "failures" / f"case-{f['case']}{case.seed.suffix}").write_bytes(case.data)
    by_outcome: Counter[str] = Counter()
    by_target: Counter[str] = Counter()
    by_mutation: Counter[str] = Counter()
    for key, n in counts.items():
        target, mutation, outcome = key.split("|")
        by_outcome[outcome] += n
        by_target[target] += n
        by_mutation[mutation] += n
    n_run = sum(counts.values()) + sum(1 for f in failures if f["outcome"] == "hang" or f["outcome"].startswith(("crash", "worker")))
    summary = {
        "cases": n_run,
        "first": first,
        "master_seed": master,
        "workers": workers,
        "timeout_s": timeout,
        "elapsed_s": round(elapsed, 1),
        "cases_per_s": round(n_run / elapsed, 1) if elapsed else None,
        "failures": len(failures),
        "failure_list": failures,
        "retried_timeouts": sorted(retried),
        "by_target": dict(by_target),
        "by_mutation": dict(sorted(by_mutation.items())),
        "by_outcome": dict(sorted(by_outcome.items(), key=lambda kv: -kv[1])),
        "slowest_case_cpu_s": round(max((s["slowest_s"] for s in stats), default=0.0), 3),
        "slowest_case_wall_s": round(max((s["slowest_wall_s"] for s in stats), default=0.0), 3),
        "slowest_case": max(stats, key=lambda s: s["slowest_s"])["slowest_case"] if stats else None,
        "worker_peak_rss_mb": round(max((s["peak_rss_mb"] for s in stats), default=0.0), 1),
        "seeds": sorted({s.name for s in find_seeds(shared, work / "seeds")}),
        "shared": str(shared) if shared else None,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def replay(index: int, *, master: int = 0, shared: Path | None = DEFAULT_SHARED, work: Path = ROOT / "benchmarks" / "out" / "fuzz") -> None:
    """Run one case in this process and show its outcome (with the traceback of a failure)."""
    shared = shared if shared is not None and Path(shared).is_dir() else None
    import faulthandler

    w = Worker(shared, work, master, timeout=60.0)
    faulthandler.dump_traceback_later(20, exit=True)  # where a hang hangs
    try:
        case = make_case(index, w.seeds, master)
        print(case.label, f"({len(case.data):,} bytes, content type {case.content_type!r})")
        t0 = time.perf_counter()
        outcome, failure = w.run(case)
        print(f"{outcome} in {time.perf_counter() - t0:.3f} s")
        if failure:
            print(failure)
    finally:
        w.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000, help="How many cases (the long run: 100000).")
    ap.add_argument("--first", type=int, default=0, help="Number of the first case.")
    ap.add_argument("--workers", type=int, default=2, help="Worker processes.")
    ap.add_argument("--seed", type=int, default=0, help="Master seed: case i is the same file for the same seed.")
    ap.add_argument("--timeout", type=float, default=5.0, help="Seconds a case may take.")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="../shared/data (real seeds; absent: generated seeds only).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fuzz", help="Summary, failing files, generated seeds.")
    ap.add_argument("--no-upload", action="store_true", help="Readers only (no server).")
    ap.add_argument("--case", type=int, default=None, help="Replay one case in this process and print its outcome.")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.case is not None:
        replay(a.case, master=a.seed, shared=a.shared, work=a.out)
        return 0
    s = fuzz(a.cases, first=a.first, workers=a.workers, master=a.seed, timeout=a.timeout, shared=a.shared, work=a.out, upload=not a.no_upload, verbose=not a.quiet)
    brief = {k: v for k, v in s.items() if k not in ("failure_list", "seeds")}
    print(json.dumps(brief, indent=2))
    for f in s["failure_list"][:20]:
        print(f"--- case {f['case']}: {f['outcome']}\n{f['detail']}")
    print(f"summary: {a.out / 'summary.json'}")
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
