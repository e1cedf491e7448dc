"""Dense whole-slide inference of the mitosis CNN versus patch-by-patch evaluation, on CPU.

The 64 px all-convolutional mitosis CNN of Tellez et al. (Table II; width 1.0 and the
distilled width 0.6) runs over a real 1000 x 1000 MoNuSeg image at 0.25 um/px (from
../shared/data; without it, a synthetic slide from ``histoscope.datasets``) in two ways
that produce the same probability map (one value per 4 x 4 pixels):

* dense: ``histoscope.infer.dense_map`` (fully convolutional, tiles of ``--tile`` px);
* patch-by-patch: every 64 px patch at stride 4 read and classified on its own, in batches
  of 256, over a ``--patch-side`` px square (the per-pixel cost is extrapolated).

A sample of patch values is checked against the dense map (max difference reported), and
both rates are projected to a 100,000 x 80,000 px slide with 30% tissue at 0.25 um/px.
Speed does not depend on the weights: a random model is used unless ``--weights`` names a
bundled one. Usage::

    .venv/bin/python benchmarks/mitosis.py [--threads 2] [--widths 1.0 0.6] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MONUSEG = REPO.parent / "shared" / "data" / "monuseg" / "images"
#: the projection: a 100,000 x 80,000 px slide at 0.25 um/px with 30% tissue
SLIDE_W, SLIDE_H, TISSUE = 100_000, 80_000, 0.30


def _image(out: Path, seed: int, quiet: bool) -> tuple[str, Path]:
    """The first MoNuSeg image, or a synthetic 1000 x 1000 slide at 0.25 um/px."""
    if MONUSEG.is_dir():
        images = sorted(MONUSEG.glob("*.png"))
        if images:
            return f"MoNuSeg {images[0].stem} (real)", images[0]
    from histoscope.datasets import synthetic_slide

    path = out / f"synthetic-mitosis-1000-seed{seed}.tiff"
    if not path.exists():
        synthetic_slide(path, width=1000, height=1000, mpp=0.25, seed=seed, n_mitoses=2, tissue_fraction=0.6, verbose=not quiet)
    print(f"note: {MONUSEG} not found; using the synthetic slide {path}")
    return "synthetic 1000 x 1000 (0.25 um/px)", path


def _models(args: argparse.Namespace, calibration: np.ndarray) -> list[tuple[str, object]]:
    """(label, model) pairs: a bundled model, or random mitosis CNNs of each width.

    Random models get batch-norm statistics from one pass over ``calibration`` so their
    outputs vary (the default initialisation gives near-constant probabilities), which
    keeps the equality check meaningful; the speed is unaffected.
    """
    import torch

    from histoscope.models import create_model
    from histoscope.models.pretrained import list_pretrained, load_pretrained
    from histoscope.utils.convert import image_to_tensor

    if args.weights:
        if args.weights in list_pretrained():
            model = load_pretrained(args.weights)
            if not callable(getattr(model, "forward_dense", None)):
                raise SystemExit(f"bundled model {args.weights!r} is a {type(model).__name__}, not a fully convolutional mitosis CNN")
            return [(f"{args.weights} (bundled, width {getattr(model, 'width', '?')})", model)]
        print(f"note: no bundled model {args.weights!r} (bundled: {list_pretrained()}); using random models")
    out = []
    for width in args.widths:
        torch.manual_seed(args.seed)
        model = create_model("mitosis_cnn", num_classes=2, input_size=64, width=width, mpp=0.25)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            model.forward_dense(image_to_tensor(calibration)[None])
        out.append((f"mitosis_cnn width {width:g} (random)", model.eval()))
    return out


def _patchwise(slide, model, side: int, batch: int) -> tuple[np.ndarray, float]:
    """Probabilities of every patch centred at stride ``st`` over the top-left ``side`` model px, and the time."""
    import torch

    from histoscope.utils.convert import image_to_tensor

    S, st, mpp = model.config.input_size, model.stride, model.config.mpp
    ds = slide.downsample_for_mpp(mpp) if mpp is not None else 1.0
    n = side // st
    centres = [(st * i, st * j) for i in range(n) for j in range(n)]
    probs = np.empty(len(centres), np.float32)

    def read(chunk):
        return np.stack([slide.read_region((round((x - S // 2) * ds), round((y - S // 2) * ds)), (S, S), mpp=mpp) for y, x in chunk])

    with torch.inference_mode():
        model(image_to_tensor(read(centres[:batch])))  # warm-up (not timed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(centres), batch):
            chunk = centres[k : k + batch]
            probs[k : k + len(chunk)] = torch.softmax(model(image_to_tensor(read(chunk))), 1)[:, 1].numpy()
    return probs.reshape(n, n), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.6], help="width factors of random models")
    ap.add_argument("--weights", help="name of a bundled model to use instead (histoscope.models.pretrained)")
    ap.add_argument("--tile", type=int, default=1024, help="dense output tile side (model pixels)")
    ap.add_argument("--batch", type=int, default=4, help="dense tiles per forward pass")
    ap.add_argument("--patch-side", type=int, default=160, help="side of the region evaluated patch by patch (px)")
    ap.add_argument("--patch-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timed dense runs; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "mitosis.json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    import torch

    from histoscope.infer import dense_map
    from histoscope.mitosis import detect_mitoses
    from histoscope.slide import open_slide

    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    label, path = _image(args.out.parent, args.seed, args.quiet)
    slide = open_slide(path, mpp=0.25)
    W, H = slide.dimensions
    rows = []
    for name, model in _models(args, slide.read_region((0, 0), (min(W, 512), min(H, 512)))):
        st = model.stride
        dense_map(slide.read_region((0, 0), (256, 256)), model, slide_mpp=0.25, tile=args.tile)  # warm-up
        t_dense = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            m = dense_map(slide, model, tile=args.tile, batch_size=args.batch, verbose=not args.quiet)
            t_dense = min(t_dense, time.perf_counter() - t0)
        t0 = time.perf_counter()
        cand = detect_mitoses(slide, model, mode="candidates", mask=None, grade=False, threshold=0.0, detection_threshold=0.0, min_distance_um=0.0)
        t_cand = time.perf_counter() - t0
        ref, t_patch = _patchwise(slide, model, args.patch_side, args.patch_batch)
        n = ref.shape[0]
        diff = float(np.abs(np.asarray(m.probs[:n, :n]) - ref).max())
        dense_mpx_s = W * H / 1e6 / t_dense
        ds = m.stride_px / st
        patch_mpx_s = (n * st * ds) ** 2 / 1e6 / t_patch  # each patch stands for a stride x stride cell of the map
        tissue_mpx = SLIDE_W * SLIDE_H * TISSUE / 1e6
        row = {
            "model": name,
            "width": float(getattr(model, "width", float("nan"))),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "image": label,
            "image_px": [W, H],
            "map_shape": list(m.shape),
            "dense_s": t_dense,
            "dense_mpx_per_s": dense_mpx_s,
            "patch_region_px": n * st * ds,
            "patches": n * n,
            "patch_s": t_patch,
            "patch_mpx_per_s": patch_mpx_s,
            "speedup": dense_mpx_s / patch_mpx_s,
            "candidates": int(len(cand.detections)),
            "candidates_s": t_cand,
            "candidates_mpx_per_s": W * H / 1e6 / t_cand,
            "slide_candidates_h": tissue_mpx / (W * H / 1e6 / t_cand) / 3600,
            "max_abs_diff": diff,
            "slide_dense_h": tissue_mpx / dense_mpx_s / 3600,
            "slide_patch_h": tissue_mpx / patch_mpx_s / 3600,
        }
        rows.append(row)
        if not args.quiet:
            print(f"{name}: dense {dense_mpx_s:.3f} Mpx/s, patch-by-patch {patch_mpx_s:.4f} Mpx/s, max |diff| {diff:.2e}", flush=True)
        if diff > 1e-4:
            raise SystemExit(f"{name}: dense and patch-by-patch maps differ by {diff:.3g}")

    print()
    print(f"Mitosis CNN (64 px, stride 4) on {label}, {args.threads} CPU threads, dense tile {args.tile} px, batch {args.batch}")
    print()
    print("| model | params (M) | dense Mpx/s | patch-by-patch Mpx/s | speedup | max abs diff | candidate mode Mpx/s | 100k x 80k slide, 30% tissue: dense | patch-by-patch | candidate mode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']:.2f} | {r['dense_mpx_per_s']:.3f} | {r['patch_mpx_per_s']:.4f} | "
            f"{r['speedup']:.0f}x | {r['max_abs_diff']:.1e} | {r['candidates_mpx_per_s']:.2f} ({r['candidates']} candidates) | "
            f"{r['slide_dense_h']:.1f} h | {r['slide_patch_h']:.0f} h | {r['slide_candidates_h']:.2f} h |"
        )
    print()
    print(
        f"(dense: best of {args.repeats} whole-image runs, reading included; patch-by-patch: the {rows[0]['patches']} "
        f"patches centred at stride 4 in the top-left {rows[0]['patch_region_px']:g} px, batches of {args.patch_batch}, "
        f"reading included; projection = {SLIDE_W * SLIDE_H * TISSUE / 1e6:,.0f} tissue Mpx / rate, tile overhead ignored)"
    )
    result = {"threads": args.threads, "tile": args.tile, "batch": args.batch, "seed": args.seed, "image": str(path), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    if not args.quiet:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
