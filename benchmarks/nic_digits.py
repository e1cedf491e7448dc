"""The NIC paper's synthetic benchmark (Tellez et al., section 4.1.1) end to end, on two CPU cores.

1. Images of the synthetic task (:mod:`histoscope.datasets.digits`): scikit-learn's 8 x 8
   digits on a 8 px grid, an axis-aligned and a tilted rectangle of one digit class each;
   the label is the tilted rectangle's class (10 classes). Train and validation images use
   one half of scikit-learn's digit pictures, test images the other half.
2. Encoders (P = S = 8): ``supervised`` (a small CNN trained to classify the training half
   of the digits; its pooled features) and ``contrastive`` (Siamese same/different location
   on patches of the training images, no labels), optionally ``vae``, ``bigan``, ``mean_rgb``.
   Their Table 1 on the digits: frozen encoder + MLP, accuracy per class.
3. Every image compressed with :func:`histoscope.infer.compress.compress` into a
   ``(size/8, size/8, C)`` grid.
4. The slide CNN (:mod:`histoscope.nic`) trained on the training grids (whole grids, 8-fold
   rotation/mirror augmentation), selected on the validation grids, tested with the 8
   orientations averaged: test accuracy, accuracy versus the tilted rectangle's size (their
   Fig. 6a), and the Jaccard index between the post-processed Grad-CAM of the first layer
   and the tilted rectangle (the paper: 0.612).

Writes ``<out>/nic_digits.json``, ``table1.md``, ``accuracy_vs_size.png`` and
``gradcam_examples.png``. Usage (the defaults reproduce the closing note of issue 7)::

    .venv/bin/python benchmarks/nic_digits.py [--encoders supervised,contrastive]
        [--train 400 --val 100 --test 200 --size 384 --epochs 80] [--seed 0] [--out benchmarks/out/nic_digits] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=-1)


def train_encoders(kinds: list[str], images: list[np.ndarray], args, log) -> dict:
    from histoscope.datasets.digits import CELL, digit_bank
    from histoscope.models.nic import create_encoder
    from histoscope.slide.backends import ArraySlide
    from histoscope.train.nic import sample_patch_pool, train_encoder, train_supervised_encoder

    encoders, info = {}, {}
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "supervised":
            x, y = digit_bank("train")
            enc, hist = train_supervised_encoder(_rgb(x), y, classes=[str(k) for k in range(10)], mpp=None, epochs=args.encoder_epochs * 3,
                                                 batch_size=64, seed=args.seed, verbose=not args.quiet)
        elif kind == "mean_rgb":
            enc, hist = create_encoder("mean_rgb", patch_size=CELL, mpp=None), {}
        else:
            sources = [ArraySlide(im) for im in images[: args.encoder_images]]
            pool = sample_patch_pool(sources, args.encoder_patches, patch=CELL, mpp=None, tissue=False, neighbours=kind == "contrastive",
                                     seed=args.seed, verbose=not args.quiet)
            enc, hist = train_encoder(kind, pool, code_size=args.code_size, width=args.encoder_width, epochs=args.encoder_epochs,
                                      batch_size=128, seed=args.seed, verbose=not args.quiet)
        encoders[kind] = enc.eval()
        info[kind] = {"seconds": round(time.perf_counter() - t0, 1), "code_size": enc.code_size,
                      "final": {k: round(float(v[-1]), 4) for k, v in hist.items() if isinstance(v, list) and v}}
        log(f"encoder {kind}: C = {enc.code_size}, {info[kind]['seconds']} s")
    return encoders, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", default="supervised,contrastive")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--size", type=int, default=384, help="image side in px (paper: 3600)")
    ap.add_argument("--code-size", type=int, default=32)
    ap.add_argument("--encoder-width", type=int, default=16)
    ap.add_argument("--encoder-epochs", type=int, default=5)
    ap.add_argument("--encoder-images", type=int, default=40)
    ap.add_argument("--encoder-patches", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=80, help="slide CNN epochs")
    ap.add_argument("--width", type=int, default=32, help="slide CNN width")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "nic_digits"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    from histoscope.datasets.digits import CELL, digit_bank, digits_dataset
    from histoscope.infer.compress import compress
    from histoscope.nic.gradcam import jaccard, postprocess, slide_gradcam
    from histoscope.nic.train import fit_slide_model, predict_slides
    from histoscope.slide.backends import ArraySlide
    from histoscope.train.nic import evaluate_encoders
    from histoscope.utils.seed import seed_everything

    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    t_all = time.perf_counter()
    n_tv = args.train + args.val
    trainval = digits_dataset(n_tv, args.size, seed=args.seed, split="train")
    test = digits_dataset(args.test, args.size, seed=args.seed + 1, split="test")
    log(f"{n_tv} train/val and {args.test} test images of {args.size} px generated")

    kinds = [k.strip() for k in args.encoders.split(",") if k.strip()]
    encoders, enc_info = train_encoders(kinds, [d.image for d in trainval[: args.train]], args, log)
    (tx, ty), (sx, sy) = digit_bank("train"), digit_bank("test")
    table1 = evaluate_encoders(encoders, (_rgb(tx), ty), (_rgb(sx), sy), [str(k) for k in range(10)], seed=args.seed)
    log(table1.to_string(float_format=lambda v: f"{v:.3f}"))

    results: dict = {"args": vars(args), "encoders": enc_info, "table1": json.loads(table1.to_json(orient="index")), "slide_cnn": {}}
    rows = args.size // CELL
    tissue = np.ones((rows, rows), np.float32)
    truth_cells = [d.tilted_mask[CELL // 2 :: CELL, CELL // 2 :: CELL] for d in test]
    long_side = np.array([d.tilted_size[0] / args.size for d in test])
    examples = {}
    for kind, enc in encoders.items():
        t0 = time.perf_counter()
        grids = [compress(ArraySlide(d.image), enc, tissue=None, batch_size=4096).load() for d in trainval + test]
        t_comp = time.perf_counter() - t0
        log(f"{kind}: compressed {len(grids)} images in {t_comp:.1f} s")
        tr = [(g, tissue, d.label) for g, d in zip(grids[: args.train], trainval[: args.train])]
        va = [(g, tissue, d.label) for g, d in zip(grids[args.train : n_tv], trainval[args.train :])]
        te_grids = grids[n_tv:]
        t0 = time.perf_counter()
        model, hist = fit_slide_model(tr, va, task="classification", n_outputs=10, crop=rows, epochs=args.epochs,
                                      crops_per_epoch=len(tr), batch_size=16, width=args.width, depth=4, seed=args.seed,
                                      verbose=not args.quiet)
        t_fit = time.perf_counter() - t0
        probs = predict_slides(model, [(g, tissue) for g in te_grids], crop=None, tta=True, seed=args.seed)
        pred = probs.argmax(1)
        y = np.array([d.label for d in test])
        correct = pred == y
        bins = np.quantile(long_side, [0, 0.25, 0.5, 0.75, 1.0])
        which = np.clip(np.searchsorted(bins, long_side, side="right") - 1, 0, 3)
        by_size = [{"long_side_from": round(float(bins[b]), 3), "long_side_to": round(float(bins[b + 1]), 3), "n": int((which == b).sum()),
                    "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(4)]
        jac_pred, jac_true = [], []
        heats = []
        for g, t, p, yy in zip(te_grids, truth_cells, pred, y):
            h = slide_gradcam(model, g, target=int(p))
            heats.append(h)
            jac_pred.append(jaccard(postprocess(h), t))
            jac_true.append(jaccard(postprocess(slide_gradcam(model, g, target=int(yy))), t) if p != yy else jac_pred[-1])
        jac_pred, jac_true = np.array(jac_pred), np.array(jac_true)
        results["slide_cnn"][kind] = {
            "test_accuracy": float(correct.mean()),
            "chance": 0.1,
            "n_test": len(y),
            "best_epoch": hist.get("best_epoch"),
            "accuracy_by_tilted_size": by_size,
            "jaccard_gradcam_predicted_class_mean": float(jac_pred.mean()),
            "jaccard_gradcam_true_class_mean": float(jac_true.mean()),
            "jaccard_gradcam_correct_only_mean": float(jac_pred[correct].mean()) if correct.any() else None,
            "seconds_compress": round(t_comp, 1),
            "seconds_train": round(t_fit, 1),
        }
        examples[kind] = heats
        examples[kind + ":pred"] = [int(p) for p in pred]
        log(f"{kind}: test accuracy {correct.mean():.3f}; Grad-CAM Jaccard {jac_pred.mean():.3f}; by size {[b['accuracy'] for b in by_size]}")
    results["seconds_total"] = round(time.perf_counter() - t_all, 1)
    (out / "nic_digits.json").write_text(json.dumps(results, indent=2))
    _figures(results, test, examples, long_side, out)
    _table(results, out)
    log(f"results: {out / 'nic_digits.json'} ({results['seconds_total']} s)")


def _table(results: dict, out: Path) -> None:
    lines = ["| encoder | C | digits: accuracy (frozen + MLP) | slide CNN test accuracy | Grad-CAM Jaccard (predicted class) | (true class) |", "|---|---|---|---|---|---|"]
    for kind, r in results["slide_cnn"].items():
        t1 = results["table1"][kind]
        lines.append(f"| {kind} | {results['encoders'][kind]['code_size']} | {t1['accuracy']:.3f} | {r['test_accuracy']:.3f} | "
                     f"{r['jaccard_gradcam_predicted_class_mean']:.3f} | {r['jaccard_gradcam_true_class_mean']:.3f} |")
    lines += ["", "Table 1 (frozen encoder + MLP, accuracy per digit class):", "", "| encoder | " + " | ".join(str(k) for k in range(10)) + " | all |",
              "|---|" + "---|" * 11]
    for kind, t1 in results["table1"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{t1[str(k)]:.2f}" for k in range(10)) + f" | {t1['accuracy']:.3f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _figures(results: dict, test, examples: dict, long_side: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.measure import find_contours

    from histoscope.explain.cam import overlay_heatmap
    from histoscope.utils.figures import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, r in results["slide_cnn"].items():
        b = r["accuracy_by_tilted_size"]
        x = [(v["long_side_from"] + v["long_side_to"]) / 2 for v in b]
        ax.plot(x, [v["accuracy"] for v in b], "o-", label=f"{kind} (all: {r['test_accuracy']:.2f})")
    ax.axhline(0.1, color="grey", ls=":", label="chance")
    ax.set_xlabel("tilted rectangle: long side / image side (quartile bins)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy vs rectangle size (NIC Fig. 6a)")
    ax.legend(fontsize=8)
    save_figure(fig, out / "accuracy_vs_size.png")

    kinds = [k for k in examples if ":" not in k]
    n = min(6, len(test))
    fig, axes = plt.subplots(len(kinds), n, figsize=(2.4 * n, 2.6 * len(kinds)), squeeze=False)
    for r, kind in enumerate(kinds):
        for c in range(n):
            d = test[c]
            pred = examples[kind + ":pred"][c]
            heat = np.kron(examples[kind][c], np.ones((8, 8), np.float32))
            axes[r, c].imshow(overlay_heatmap(d.image, heat, alpha=0.45))
            for cont in find_contours(d.tilted_mask.astype(float), 0.5):
                axes[r, c].plot(cont[:, 1], cont[:, 0], color="white", lw=1.2)
            axes[r, c].set_title(f"{kind}: label {d.label}, predicted {pred}", fontsize=8, color="black" if pred == d.label else "red")
            axes[r, c].axis("off")
    fig.suptitle("Grad-CAM of the first layer (eq. 7) for the predicted class; white: the tilted rectangle (the label); red title: wrong", fontsize=10)
    save_figure(fig, out / "gradcam_examples.png")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
