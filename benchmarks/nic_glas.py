"""NIC on real H&E: image-level benign / malignant prediction of GlaS colon images from compressed images.

Each GlaS image (../shared/data/glas, 20x, 0.62 um/px, about 0.5 x 0.3 mm) is treated as a
small slide: compressed with every encoder (P = 128 px at the images' own 0.62 um/px, since
histoscope does not upsample, while the encoders were trained at 0.5 um/px; stride 64 px, so
a grid of 8 x 12 cells), then the slide CNN is cross-validated with the paper's 4-fold
rotation (2 train, 1 validation, 1 test folds), **folds grouped by patient** (the 12 GlaS
patients here; no patient in both training and test), with random 8 x 8 crops during training
and T = 8 crops x 8 orientations at test. Pooled test AUC and accuracy per encoder; the
Grad-CAM of the first layer drawn over a few test images. The encoders' Table 1 (frozen
encoder + MLP on patient-held-out GlaS patches) is `histoscope nic evaluate-encoders`.

The supervised encoder (the bundled colorectal_grader's features) is left out: that
classifier was trained on GlaS images, so its features would leak the test folds.

Writes ``<out>/nic_glas.json``, ``table.md``, ``gradcam_glas.png``; ``<out>/<encoder>/fold0.pt``
(a slide model, e.g. for ``histoscope analyze --nic-encoder E --slide-model fold0.pt``)::

    .venv/bin/python benchmarks/nic_glas.py [--encoders mean_rgb,contrastive,vae,bigan] [--seed 0]
        [--out benchmarks/out/nic_glas] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GLAS = REPO.parent / "shared" / "data" / "glas"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", default="mean_rgb,contrastive,vae,bigan")
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--crop", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--ungrouped", action="store_true", help="folds by image, not by patient (a leaky control: shows what patient confounding does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(GLAS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "nic_glas"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    import pandas as pd

    from histoscope.infer.compress import compress
    from histoscope.models.nic import load_encoder
    from histoscope.nic.gradcam import slide_gradcam
    from histoscope.nic.model import save_slide_model
    from histoscope.nic.train import cross_validate
    from histoscope.slide.reader import open_slide

    data = Path(args.data)
    table = pd.read_csv(data / "labels.csv")
    y = (table["grade_glas"] == "malignant").to_numpy().astype(int)
    patients = table["patient_id"].astype(str).to_numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    log(f"{len(table)} GlaS images, {y.sum()} malignant, {len(set(patients))} patients")
    results: dict = {"args": vars(args), "n_images": len(table), "n_malignant": int(y.sum()), "n_patients": len(set(patients)), "encoders": {}}
    cams: dict = {}
    for name in [e for e in args.encoders.split(",") if e]:
        enc = load_encoder(name)
        t0 = time.perf_counter()
        grids = []
        for path in table["image"]:
            with open_slide(data / path, mpp=0.62) as slide:
                grids.append(compress(slide, enc, stride=args.stride, mpp=max(enc.mpp or 0.62, 0.62), workers=1))
        t_comp = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = cross_validate(grids, y, folds=4, groups=None if args.ungrouped else patients, crop=args.crop, n_crops=8, seed=args.seed, epochs=args.epochs,
                             width=32, return_models=True, verbose=not args.quiet)
        t_cv = time.perf_counter() - t0
        models = res["models"]
        sub = out / name
        sub.mkdir(exist_ok=True)
        save_slide_model(models[0], sub / "fold0.pt", card={"classes": ["benign", "malignant"], "task": "classification", "encoder": name,
                                                             "data": "GlaS (research use only)", "seed": args.seed, "fold": 0})
        pooled = res["metrics"]
        per_fold = [f["metrics"] for f in res["per_fold"]]
        results["encoders"][name] = {"code_size": enc.code_size, "auc": pooled.get("auc"), "accuracy": pooled.get("accuracy"),
                                     "per_fold": per_fold, "grid": list(grids[0].shape), "seconds_compress": round(t_comp, 1), "seconds_cv": round(t_cv, 1)}
        log(f"{name}: pooled test AUC {pooled.get('auc'):.3f}, accuracy {pooled.get('accuracy'):.3f} ({t_comp:.0f} s compress, {t_cv:.0f} s CV)")
        # Grad-CAM of each run's model on its own test images (first four malignant and benign)
        cams[name] = {}
        for run, fold in enumerate(res["per_fold"]):
            for i in fold["test_index"]:
                cams[name][int(i)] = (slide_gradcam(models[run], grids[i].load(), target=1, tissue=grids[i].tissue), float(res["predictions"][i][1]))
        cams[name]["grids"] = grids
    (out / "nic_glas.json").write_text(json.dumps(results, indent=2, default=float))
    lines = ["| encoder | C | pooled test AUC | accuracy | per-fold AUC |", "|---|---|---|---|---|"]
    for name, r in results["encoders"].items():
        folds = ", ".join("n/a" if f.get("auc") is None else f"{f['auc']:.2f}" for f in r["per_fold"])
        lines.append(f"| {name} | {r['code_size']} | {r['auc']:.3f} | {r['accuracy']:.3f} | {folds} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    best = max(results["encoders"], key=lambda k: results["encoders"][k]["auc"] or 0)
    _figure(table, data, y, cams[best], best, out / "gradcam_glas.png")


def _figure(table, data: Path, y: np.ndarray, cams: dict, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from histoscope.nic.gradcam import gradcam_overlay
    from histoscope.utils.figures import save_figure

    pick = list(np.flatnonzero(y == 1)[:4]) + list(np.flatnonzero(y == 0)[:4])
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.2))
    for ax, i in zip(axes.ravel(), pick):
        img = np.asarray(Image.open(data / table["image"][i]).convert("RGB"))
        heat, p = cams[i]
        c = cams["grids"][i]
        on = c.to_slide_image(heat, (img.shape[1], img.shape[0]), fill=0.0).astype(np.float32)
        ax.imshow(gradcam_overlay(img, on, alpha=0.4))
        ax.set_title(f"{table['name'][i]}: {'malignant' if y[i] else 'benign'}, p(malignant) = {p:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"GlaS test images ({name} encoder): Grad-CAM of the slide CNN's first layer for 'malignant'", fontsize=11)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
