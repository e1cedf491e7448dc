"""Kill a cohort run with SIGKILL at random moments; every rerun must finish with the same results.

One uninterrupted ``histoscope analyze`` of a small cohort is the reference (run sequentially
and on Dask; the two must be identical too). Each trial starts
the same command in a fresh folder (sequentially or as Dask jobs on a 2-worker LocalCluster,
drawn at random), kills its whole process group with SIGKILL at a random moment of the
reference's duration (sometimes twice: the rerun is killed too), then
* checks that every report folder visible after the kill is complete and equal to the
  reference (a partial one is only ever a hidden ``.NAME.partial``), and that no
  ``cohort.csv`` exists unless every slide is done;
* reruns the command to completion, and compares every output with the reference: byte for
  byte for the data files (tiles.csv, tissue-classes.csv / .geojson, detections, zarr chunks,
  PNG figures), and with timings, memory figures and paths removed for summary.json,
  report.html, cohort.csv and cohort.html.

Usage::

    python benchmarks/faults.py --trials 20 --seed 0 --out benchmarks/out/faults
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuzz.faults import output_tree as tree  # noqa: E402
SHARED = ROOT.parent / "shared" / "data"


def cohort(work: Path) -> list[str]:
    """Real slides from ../shared when present, plus two synthetic ones (one at 40x: the mitosis stage)."""
    from histoscope.datasets import synthetic_slide

    work.mkdir(parents=True, exist_ok=True)
    slides = [str(SHARED / "slides" / "CMU-1-Small-Region.svs")] if (SHARED / "slides" / "CMU-1-Small-Region.svs").is_file() else []
    for name, mpp, size in (("synthetic-20x", 0.5, (3072, 2048)), ("synthetic-40x", 0.25, (3072, 2560))):
        p = work / f"{name}.tiff"
        if not p.exists():
            synthetic_slide(p, width=size[0], height=size[1], mpp=mpp, seed=7, n_mitoses=6, verbose=False)
        slides.append(str(p))
    return slides


def command(slides: list[str], out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "histoscope.cli.main", "analyze", *slides, "--out", str(out), "--workers", str(workers), "--quiet", "--seed", "0"]


def run(cmd: list[str], kill_after: float | None = None) -> tuple[int, float]:
    """Run ``cmd`` in its own process group; SIGKILL the group after ``kill_after`` s. Returns (code, seconds)."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and every Dask worker it started
        proc.wait()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return proc.returncode, time.perf_counter() - t0


def compare(ref: dict[str, bytes], got: dict[str, bytes], *, complete: bool) -> list[str]:
    """Problems of ``got`` against ``ref`` (``complete=False``: after a kill, only finished folders)."""
    problems = []
    if complete:
        missing, extra = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
        if missing:
            problems.append(f"missing {missing[:5]}")
        if extra:
            problems.append(f"unexpected {extra[:5]}")
    else:
        slides_done = {k.split("/")[0] for k in got if "/" in k}
        want = {k for k in ref if k.split("/")[0] in slides_done}
        if set(got) - set(ref):
            problems.append(f"unexpected after the kill {sorted(set(got) - set(ref))[:5]}")
        if want - set(got):
            problems.append(f"a visible report folder is incomplete: {sorted(want - set(got))[:5]}")
        if "cohort.csv" in got and len(slides_done) < len({k.split('/')[0] for k in ref if '/' in k}):
            problems.append("cohort.csv exists although slides are missing")
    for k in sorted(set(ref) & set(got)):
        if ref[k] != got[k]:
            problems.append(f"{k} differs from the uninterrupted run")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "faults")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    slides = cohort(a.out / "slides")
    t_ref = {}
    for workers in (1, 2):  # the reference, sequential and on Dask: the two must agree too
        ref_dir = a.out / f"ref-{workers}"
        shutil.rmtree(ref_dir, ignore_errors=True)
        _, t_ref[workers] = run(command(slides, ref_dir, workers))
    ref = tree(a.out / "ref-1")
    dask_vs_sequential = compare(ref, tree(a.out / "ref-2"), complete=True)
    print(f"reference: {len(slides)} slides, {len(ref)} output files, {t_ref[1]:.1f} s sequential, {t_ref[2]:.1f} s on Dask; "
          f"Dask vs sequential: {'identical' if not dask_vs_sequential else dask_vs_sequential}", flush=True)
    rows = []
    for k in range(a.trials):
        out = a.out / f"trial-{k}"
        shutil.rmtree(out, ignore_errors=True)
        workers = rng.choice((1, 2))
        kills = [rng.uniform(0.05, 0.95) * t_ref[workers]]
        if rng.random() < 0.3:  # kill the rerun too, earlier on (it has less to do)
            kills.append(rng.uniform(0.05, 0.6) * t_ref[workers])
        problems, codes = [], []
        for j, when in enumerate(kills):
            for _ in range(6):  # the run finished before the kill (a quieter moment): start again, kill earlier
                code, _ = run(command(slides, out, workers), kill_after=when)
                if code != 0 or j > 0:
                    break
                shutil.rmtree(out, ignore_errors=True)
                when *= 0.6
            kills[j] = when
            codes.append(code)
            if out.exists():
                problems += compare(ref, tree(out), complete=False)
        _, t_rerun = run(command(slides, out, workers))
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
        problems += compare(ref, tree(out), complete=True)
        if leftovers:
            problems.append(f"partial folders left after the rerun: {leftovers}")
        killed = sum(c == -signal.SIGKILL for c in codes)
        rows.append({"trial": k, "workers": workers, "kill_at_s": [round(w, 1) for w in kills], "killed": killed, "rerun_s": round(t_rerun, 1), "identical": not problems, "problems": problems})
        if not a.quiet:
            print(f"trial {k}: workers={workers} kill at {rows[-1]['kill_at_s']} s (killed {killed}x), rerun {t_rerun:.1f} s -> {'identical' if not problems else problems}", flush=True)
        if not problems:  # a failing trial's folder is kept to look at
            shutil.rmtree(out, ignore_errors=True)
    summary = {
        "slides": slides,
        "reference_s": {"sequential": round(t_ref[1], 1), "dask": round(t_ref[2], 1)},
        "dask_vs_sequential": dask_vs_sequential or "identical",
        "output_files": len(ref),
        "trials": len(rows),
        "kills": sum(r["killed"] for r in rows),
        "identical": sum(r["identical"] for r in rows),
        "rows": rows,
    }
    (a.out / "faults.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    return 0 if summary["identical"] == summary["trials"] and not dask_vs_sequential else 1


if __name__ == "__main__":
    raise SystemExit(main())
