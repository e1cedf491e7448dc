"""End-to-end time and peak memory of ``histoscope analyze``, per stage, and a cohort run.

Two parts:

* ``single``: ``histoscope analyze SLIDE --out DIR -q`` is run as a subprocess (the console
  script, exactly as a user runs it) on the real CMU-1-Small-Region.svs (20x: the mitosis
  stage is skipped, histoscope counts mitoses on 40x scans only), on the real TCGA slide
  with ``--slide-mpp 0.25`` (40x: every stage runs) and on a synthetic ``--size`` x
  ``--size`` px slide at 0.25 um/px (40x) with mitoses scaled to its area, generated once
  (not timed). Each run is launched from a fresh, small intermediate Python process that
  reports the wall time and the peak resident memory of the analysis process
  (``getrusage(RUSAGE_CHILDREN).ru_maxrss``; the intermediate process itself stays at some
  tens of MB, which bounds what the child can inherit). The per-stage seconds and peak
  memory come from the report's ``summary.json``. The issue's target: under 2 GB peak for
  the 40,000 px slide.
* ``cohort``: ``--cohort-n`` synthetic slides of ``--cohort-size`` px (0.25 um/px, one seed
  each) analysed with ``analyze_slides`` sequentially (``workers=1``) and on a 2-worker Dask
  LocalCluster (``workers=2``), each in a fresh process and a fresh output folder; wall
  times, speed-up, the torch thread count inside the jobs, and a check that both runs give
  the same per-slide results.

Results go to ``<out>/analyze.json`` and a printed table. Usage::

    .venv/bin/python benchmarks/analyze.py [--part all|single|cohort] [--size 40000]
        [--cohort-size 6000] [--cohort-n 8] [--seed 0] [--out benchmarks/out] [--quiet]
"""

from __future__ import annotations

# Only light imports at module level: the same file is the small intermediate process that
# measures a child's peak memory, and must itself stay small.
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _memory import peak_rss_mb  # benchmarks/_memory.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
SHARED_SLIDES = REPO.parent / "shared" / "data" / "slides"
CMU = SHARED_SLIDES / "CMU-1-Small-Region.svs"
TCGA = SHARED_SLIDES / "tcga-cr-7395-01a-01-ts1.svs"

#: The issue's target for the 40,000 x 40,000 px slide, in MB (MiB, as every figure here).
TARGET_PEAK_MB = 2000.0
#: Mitoses drawn per px^2 of synthetic slide: 20 on the 12,000 x 9,000 px demo slide.
MITOSES_PER_PX2 = 20 / (12_000 * 9_000)
SYNTH_MPP = 0.25


def _histoscope_cmd() -> list[str]:
    script = Path(sys.executable).parent / "histoscope"
    return [str(script)] if script.exists() else [sys.executable, "-m", "histoscope.cli.main"]


# -- intermediate process: run one command, report its wall time and peak memory -------------


def _measure(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    return {
        "cmd": cmd,
        "returncode": proc.returncode,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        "measuring_process_peak_mb": peak_rss_mb(),
        "stdout_tail": proc.stdout[-2000:],
        "stderr_tail": proc.stderr[-4000:],
    }


def _run_measured(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(cmd)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- cohort job process: analyse the cohort once, sequentially or on a LocalCluster ----------


def _cohort_worker(paths: list[str], out_dir: str, workers: int, seed: int, verbose: bool) -> dict:
    t_start = time.perf_counter()
    from histoscope.analyze import AnalysisConfig, analyze_slides

    config = AnalysisConfig(seed=seed)
    t0 = time.perf_counter()
    results = analyze_slides(paths, out_dir, config=config, workers=workers, verbose=verbose)
    wall = time.perf_counter() - t0
    slides = []
    for r in results:
        row = {"slide": Path(r.item).name, "ok": r.ok, "error": r.error, "job_s": r.seconds}
        if r.ok:
            v = r.value
            m = v.get("mitosis") or {}
            row.update(
                skipped=bool(v.get("skipped")),
                tissue_tiles=v["tissue_tiles"],
                detections=m.get("detections"),
                grade=m.get("grade"),
                hotspot_count=m.get("hotspot_count"),
                tissue_classes=v.get("tissue_classes"),
                torch_threads=int(v["versions"]["torch threads"]),
                peak_memory_mb=max(v["peak_memory_mb"].values()),
                timings_s=v["timings_s"],
            )
        slides.append(row)
    return {
        "workers": workers,
        "wall_s": wall,
        "jobs_s": sum(s["job_s"] for s in slides),
        "process_wall_s": time.perf_counter() - t_start,
        "process_peak_rss_mb": peak_rss_mb(),
        "slides": slides,
    }


def _run_cohort(paths: list[Path], out_dir: Path, workers: int, seed: int, verbose: bool) -> dict:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = [sys.executable, __file__, "--cohort-worker", str(workers), "--cohort-out", str(out_dir), "--seed", str(seed), *(["--quiet"] if not verbose else []), "--", *map(str, paths)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parts -----------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, flush=True)


def _synthetic(path: Path, size: int, seed: int, verbose: bool) -> Path:
    """Generate the synthetic 40x slide once (not timed in the figures)."""
    from histoscope.datasets import synthetic_slide

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        n_mitoses = max(1, round(MITOSES_PER_PX2 * size * size))
        t0 = time.perf_counter()
        synthetic_slide(path, width=size, height=size, mpp=SYNTH_MPP, seed=seed, n_mitoses=n_mitoses, verbose=verbose)
        _say(f"generated {path} ({n_mitoses} mitoses) in {time.perf_counter() - t0:.1f} s (not timed below)")
    return path


def part_single(args: argparse.Namespace) -> list[dict]:
    slides: list[tuple[str, Path, list[str]]] = []
    if not SHARED_SLIDES.is_dir():
        _say(f"note: {SHARED_SLIDES} not found (the shared data folder beside the repository); the real slides are skipped")
    else:
        for label, path, extra in (("CMU-1-Small-Region.svs (real, 20x)", CMU, []), ("tcga-cr-7395-01a-01-ts1.svs (real, 40x)", TCGA, ["--slide-mpp", "0.25"])):
            if path.exists():
                slides.append((label, path, extra))
            else:
                _say(f"note: {path} not found; skipped")
    synth = _synthetic(args.out / f"synthetic-40x-{args.size}.tiff", args.size, args.seed, not args.quiet)
    slides.append((f"synthetic {args.size:,} x {args.size:,} (40x)", synth, []))

    rows = []
    for label, path, extra in slides:
        out_dir = args.out / "analyze-single" / path.stem
        if out_dir.exists():
            shutil.rmtree(out_dir)
        cmd = [*_histoscope_cmd(), "analyze", str(path), "--out", str(out_dir), "-q", "--seed", str(args.seed), *extra]
        _say(f"analysing {label} ...")
        m = _run_measured(cmd)
        if m["returncode"] != 0:
            raise SystemExit(f"{label}: histoscope analyze failed (exit {m['returncode']}):\n{m['stderr_tail']}")
        summary = json.loads((out_dir / path.stem / "summary.json").read_text())
        row = {
            "slide": label,
            "path": str(path),
            "command": " ".join(["histoscope", *cmd[len(_histoscope_cmd()):]]),
            "dimensions": summary["slide"]["dimensions"],
            "mpp": summary["slide"]["mpp"],
            "tissue_tiles": summary["tissue_tiles"],
            "mitoses": (summary.get("mitosis") or {}).get("detections"),
            "mitosis_stage_ran": "mitosis" in summary,
            "notes": [w for w in summary.get("warnings", []) if w.startswith("no mitosis detection")],
            "wall_s": m["wall_s"],
            "peak_rss_mb": m["peak_rss_mb"],
            "measuring_process_peak_mb": m["measuring_process_peak_mb"],
            "stages_total_s": sum(summary["timings_s"].values()),
            "stages": [{"stage": k, "seconds": v, "peak_mb": summary["peak_memory_mb"][k]} for k, v in summary["timings_s"].items()],
            "torch_threads": int(summary["versions"]["torch threads"]),
        }
        if path == synth:
            row["target_peak_mb"] = TARGET_PEAK_MB
            row["target_met"] = m["peak_rss_mb"] < TARGET_PEAK_MB
        rows.append(row)
        _say(f"  {m['wall_s']:.1f} s, peak {m['peak_rss_mb']:,.0f} MB")
    return rows


def part_cohort(args: argparse.Namespace) -> dict:
    n_mitoses = max(1, round(MITOSES_PER_PX2 * args.cohort_size**2))
    paths = []
    for i in range(args.cohort_n):
        p = args.out / "cohort" / f"synthetic-40x-{args.cohort_size}-seed{args.seed + i}.tiff"
        if not p.exists():
            from histoscope.datasets import synthetic_slide

            p.parent.mkdir(parents=True, exist_ok=True)
            synthetic_slide(p, width=args.cohort_size, height=args.cohort_size, mpp=SYNTH_MPP, seed=args.seed + i, n_mitoses=n_mitoses, verbose=False)
        paths.append(p)
    runs = {}
    for name, workers in (("sequential", 1), ("localcluster-2", 2)):
        _say(f"cohort of {len(paths)} slides, {name} ...")
        runs[name] = r = _run_cohort(paths, args.out / f"analyze-cohort-{name}", workers, args.seed, not args.quiet)
        failed = [s for s in r["slides"] if not s["ok"]]
        if failed:
            raise SystemExit(f"cohort ({name}): {len(failed)} slide(s) failed: {failed}")
        if any(s["skipped"] for s in r["slides"]):
            raise SystemExit(f"cohort ({name}): slides were skipped as already complete; the output folder was not fresh")
        _say(f"  {r['wall_s']:.1f} s")
    keys = ("slide", "tissue_tiles", "detections", "grade", "hotspot_count")
    seq, par = ([{k: s[k] for k in keys} for s in runs[n]["slides"]] for n in runs)
    differences = [(a, b) for a, b in zip(seq, par) if a != b]
    return {
        "slides": len(paths),
        "size": args.cohort_size,
        "mpp": SYNTH_MPP,
        "n_mitoses_per_slide": n_mitoses,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "speedup": runs["sequential"]["wall_s"] / runs["localcluster-2"]["wall_s"],
        "identical_results": not differences,
        "differences": differences,
    }


def _print_single(rows: list[dict]) -> None:
    for r in rows:
        w, h = r["dimensions"]
        print()
        print(f"{r['slide']}: {w:,} x {h:,} px, {r['tissue_tiles']} tissue tiles" + ("" if r["mitoses"] is None else f", {r['mitoses']} mitoses"))
        print(f"  {'stage':24s} {'seconds':>9s} {'peak MB':>9s}")
        for s in r["stages"]:
            print(f"  {s['stage']:24s} {s['seconds']:9.2f} {s['peak_mb']:9,.0f}")
        print(f"  {'sum of stages':24s} {r['stages_total_s']:9.2f}")
        print(f"  {'end to end (process)':24s} {r['wall_s']:9.2f} {r['peak_rss_mb']:9,.0f}")
        if not r["mitosis_stage_ran"]:
            print("  mitosis stage skipped: " + (r["notes"][0] if r["notes"] else "(no reason recorded)"))
        if "target_met" in r:
            verdict = "met" if r["target_met"] else "NOT met"
            print(f"  target: peak under {TARGET_PEAK_MB:,.0f} MB: {verdict} ({r['peak_rss_mb']:,.0f} MB)")
    print(
        "\n(stage figures from summary.json: seconds, and peak RSS sampled every 20 ms during the stage; "
        "end to end: wall time of `histoscope analyze` including start-up, and its peak RSS from getrusage; "
        f"torch threads: {rows[0]['torch_threads'] if rows else '?'})"
    )


def _print_cohort(c: dict) -> None:
    print()
    print(f"cohort: {c['slides']} synthetic slides of {c['size']:,} x {c['size']:,} px at {c['mpp']} um/px, {c['cpu_count']} CPU cores")
    print(f"  {'run':16s} {'wall s':>8s} {'sum of jobs s':>14s} {'torch threads/job':>18s} {'max job peak MB':>16s} {'process peak MB':>16s}")
    for name, r in c["runs"].items():
        threads = sorted({s["torch_threads"] for s in r["slides"]})
        print(
            f"  {name:16s} {r['wall_s']:8.1f} {r['jobs_s']:14.1f} {','.join(map(str, threads)):>18s} "
            f"{max(s['peak_memory_mb'] for s in r['slides']):16,.0f} {r['process_peak_rss_mb']:16,.0f}"
        )
    print(f"  speed-up of the LocalCluster: {c['speedup']:.2f}x; identical per-slide results: {c['identical_results']}")
    for a, b in c["differences"]:
        print(f"    differs: sequential {a} vs cluster {b}")
    print(
        "  (wall s: analyze_slides, LocalCluster start-up included; sum of jobs: seconds inside the jobs, model "
        "loading included; Dask starts its workers with OMP_NUM_THREADS=1, so each cluster job's torch uses one thread; "
        "max job peak: largest per-stage peak in the "
        "slides' summary.json; process peak: VmHWM of the calling process, which holds the jobs only when sequential)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "single", "cohort"], default="all")
    ap.add_argument("--size", type=int, default=40_000, help="side of the synthetic 40x slide in pixels")
    ap.add_argument("--cohort-size", type=int, default=6000, help="side of each cohort slide in pixels")
    ap.add_argument("--cohort-n", type=int, default=8, help="slides in the cohort")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic slides (cohort: seed, seed + 1, ...) and of the analysis")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--cohort-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cohort-out", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return
    if args.cohort_worker:
        print(json.dumps(_cohort_worker(args.paths, args.cohort_out, args.cohort_worker, args.seed, not args.quiet)))
        return
    if args.size < 256 or args.cohort_size < 256 or args.cohort_n < 1:
        ap.error(f"--size and --cohort-size must be at least 256 and --cohort-n at least 1, got {args.size}, {args.cohort_size}, {args.cohort_n}")

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpu_count": os.cpu_count(), "size": args.size, "seed": args.seed, "load_average_start": os.getloadavg()}
    t0 = time.perf_counter()
    if args.part in ("all", "single"):
        result["single"] = part_single(args)
    if args.part in ("all", "cohort"):
        result["cohort"] = part_cohort(args)
    result["benchmark_s"] = time.perf_counter() - t0
    result["load_average_end"] = os.getloadavg()
    (args.out / "analyze.json").write_text(json.dumps(result, indent=2))
    if "single" in result:
        _print_single(result["single"])
    if "cohort" in result:
        _print_cohort(result["cohort"])
    print(
        f"\nwrote {args.out / 'analyze.json'} ({result['benchmark_s']:.0f} s; load average of the machine "
        f"{result['load_average_start'][0]:.1f} at the start, {result['load_average_end'][0]:.1f} at the end, {os.cpu_count()} cores)"
    )
    if "cohort" in result and not result["cohort"]["identical_results"]:
        raise SystemExit("the sequential and LocalCluster cohort runs gave different results (see above)")


if __name__ == "__main__":
    main()
