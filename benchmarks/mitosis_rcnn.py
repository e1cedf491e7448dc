"""MITOS-RCNN's Table II on our data, beside the dense CNN, and seconds per 1000 x 1000 field.

Run after training the three variants with ``histoscope train rcnn`` (docs/mitosis.md, "MITOS-RCNN")::

    python benchmarks/mitosis_rcnn.py --data ../shared/data --runs benchmarks/out/rcnn

For each detector: the detection threshold is chosen on the validation patients (best F1),
then precision, recall, F1 and TP / FP / FN (their Fig. 4) on the held-out test patients at
that threshold, with the protocol of ``histoscope.mitosis.detect.evaluate_detection``
(AMi-Br test crops + MoNuSeg test fields, one-to-one matching within 8 um, the same scored
region). The dense CNN is the bundled ``mitosis_detector`` (map threshold 0.8, delta chosen on
validation, as its model card). Timings: a real 1000 x 1000 MoNuSeg field, 1 and 2 torch
threads, best of ``--repeats``. Writes ``table.csv``, ``table.md``, ``curves.csv`` and
``detections.png`` to ``--out`` (benchmarks/out/mitosis_rcnn by default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

VARIANT_LABELS = {
    "conv5": "Faster R-CNN, conv5 features (standard)",
    "conv4": "conv4 only (conv5 dropped)",
    "cascade": "conv3 + conv4 fusion, cascaded RPNs (MITOS-RCNN)",
}


def row_at(curve: pd.DataFrame, t: float) -> dict:
    return curve.iloc[int(np.argmin(np.abs(curve["threshold"].to_numpy() - t)))].to_dict()


def seconds_per_field(fn, field: np.ndarray, threads: int, repeats: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn(field)  # warm-up
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            fn(field)
            best = min(best, time.perf_counter() - t)
        return float(best)
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--runs", default="benchmarks/out/rcnn", help="Folder with <variant>/best.pt from histoscope train rcnn.")
    ap.add_argument("--variants", default="conv5,conv4,cascade")
    ap.add_argument("--dense", default="mitosis_detector", help="The dense CNN to compare with (bundled name or checkpoint).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/mitosis_rcnn")
    args = ap.parse_args()

    from PIL import Image

    from histoscope.datasets.mitosis import mitosis_samples
    from histoscope.mitosis.detect import detect_mitoses, evaluate_detection
    from histoscope.mitosis.rcnn import detect_mitoses_rcnn, evaluate_rcnn_detection
    from histoscope.models.pretrained import resolve_model
    from histoscope.train.engine import load_checkpoint
    from histoscope.train.rcnn import select_threshold

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = mitosis_samples(args.data, seed=args.seed)
    table = d.images.table
    t = d.subset("test")
    test_fields = sorted(set(t.loc[t["kind"].str.startswith("monuseg"), "item"]))
    field = np.asarray(Image.open(table.loc[test_fields[0], "image"]).convert("RGB"))
    assert field.shape[:2] == (1000, 1000), field.shape
    rows, curves, preds = [], [], {}

    def record(name: str, label: str, model, val_best: dict, thr: float, test: dict, timer) -> None:
        r = row_at(test["curve"], thr)
        p = test["predictions"]
        n_mon = int(((p["kind"] == "monuseg") & (p["score"] >= r["threshold"])).sum())  # every one a false positive
        t1 = seconds_per_field(timer, field, 1, args.repeats)
        t2 = seconds_per_field(timer, field, 2, args.repeats)
        rows.append(
            {
                "detector": name, "description": label, "parameters": sum(p.numel() for p in model.parameters()),
                "threshold (val)": thr, "val F1": val_best["f1"], "precision": r["precision"], "recall": r["recall"], "F1": r["f1"],
                "TP": int(r["tp"]), "FP": int(r["fp"]), "FP on MoNuSeg": n_mon, "FP on AMi-Br crops": int(r["fp"]) - n_mon, "FN": int(r["fn"]),
                "false det./mm2 MoNuSeg": r["fp_per_mm2_monuseg"],
                "best test F1 (threshold)": f"{test['best']['f1']:.3f} ({test['best']['threshold']:.2f})",
                "s/field 1 thread": t1, "s/field 2 threads": t2,
            }
        )  # fmt: skip
        curves.append(test["curve"].assign(detector=name))
        preds[name] = (test["predictions"], thr)
        print(json.dumps(rows[-1], default=str), flush=True)

    dense = resolve_model(args.dense)
    val = evaluate_detection(dense, d, split="val", map_threshold=0.8)
    delta = float(val["best"]["threshold"])
    test = evaluate_detection(dense, d, split="test", map_threshold=0.8)
    record("dense CNN", f"bundled {args.dense} (map threshold 0.8, delta on validation)", dense, val["best"], delta, test,
           lambda f: detect_mitoses(f, dense, slide_mpp=0.25, mask=None, grade=False))  # fmt: skip
    for v in args.variants.split(","):
        model = load_checkpoint(Path(args.runs) / v / "best.pt")
        val = evaluate_rcnn_detection(model, d, split="val")
        thr = select_threshold(val)
        test = evaluate_rcnn_detection(model, d, split="test")
        record(v, VARIANT_LABELS[v], model, val["best"], thr, test, lambda f, m=model: detect_mitoses_rcnn(f, m, slide_mpp=0.25, mask=None, grade=False, detection_threshold=0.0))

    df = pd.DataFrame(rows)
    df.to_csv(out / "table.csv", index=False)
    pd.concat(curves).to_csv(out / "curves.csv", index=False)
    fmt = {c: (lambda v: f"{v:.3f}") for c in ("threshold (val)", "val F1", "precision", "recall", "F1")}
    fmt.update({"false det./mm2 MoNuSeg": lambda v: f"{v:.0f}", "s/field 1 thread": lambda v: f"{v:.2f}", "s/field 2 threads": lambda v: f"{v:.2f}", "parameters": lambda v: f"{v / 1e6:.2f} M"})
    md = df.copy()
    for c, f in fmt.items():
        md[c] = md[c].map(f)
    text = markdown(md)
    (out / "table.md").write_text(text)
    print(text)
    draw(preds, d, test_fields[0], out / "detections.png")


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def draw(preds: dict, d, field_item: int, path: Path) -> None:
    """A held-out MoNuSeg field and four held-out AMi-Br crops with each detector's detections (rings of 8 um)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    table = d.images.table
    t = d.subset("test")
    crops = sorted(set(t.loc[t["kind"] == "mitosis", "item"]))[::40][:4]
    fig, axes = plt.subplots(len(preds), 5, figsize=(15, 3.2 * len(preds)), gridspec_kw={"width_ratios": [2.2, 1, 1, 1, 1]})
    for r, (name, (pred, thr)) in enumerate(preds.items()):
        for c, item in enumerate([field_item, *crops]):
            ax = axes[r, c]
            img = np.asarray(Image.open(table.loc[item, "image"]).convert("RGB"))
            ax.imshow(img)
            p = pred[(pred["image"] == item) & (pred["score"] >= thr)]
            for x, y, s in p[["x", "y", "score"]].itertuples(index=False):
                ax.add_patch(plt.Circle((x, y), 32, fill=False, color="lime" if c else "red", lw=1.5))
                ax.text(x + 34, y, f"{s:.2f}", color="yellow", fontsize=6)
            if c:
                ax.add_patch(plt.Circle((64, 64), 2, color="cyan"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {'MoNuSeg field (no mitosis)' if c == 0 else 'AMi-Br test crop'} — {len(p)} det." if c in (0, 1) else f"{len(p)} det.", fontsize=8)
    fig.suptitle("Held-out test patients; rings = detections (8 um radius) at the threshold chosen on validation; cyan dot = annotated mitosis", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
