"""The whole-slide mitosis paper's Table III on our data: augmentation ablation, single CNN, ensemble, students.

Rows (all on the same patient split; test patients never seen in training or checkpointing):

* easy model (uniform negatives, RCSEHBG);
* single CNNs with hard negatives and augmentation RSEB / RCSEB / RCSEHBG (their ablation);
* the bagging ensemble of k networks (RCSEHBG);
* students of width gamma = 1.0 / 0.8 / 0.6 distilled from the ensemble.

Columns: parameters; patch-level F1 / AUROC on all test patches; same-source AUROC (mitosis
versus corners of the same AMi-Br crops); detection precision / recall / F1 with one-to-one
matching within 8 um on the AMi-Br test crops (dense inference, detection threshold 0.8 and
the best threshold); false detections per mm^2 on the MoNuSeg test fields.

Networks already trained under ``--out`` (e.g. by ``histoscope train mitosis ... --ensemble 3
--distill-width 0.6 --out DIR``) are reused, so this script only trains what is missing.

    python benchmarks/mitosis_table.py --data ../shared/data --out /work/runs/mitosis --ensemble 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--out", default="histoscope-mitosis")
    ap.add_argument("--ensemble", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--students", default="1.0,0.8,0.6")
    ap.add_argument("--ablation", default="RSEB,RCSEB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    verbose = not args.quiet

    from histoscope.datasets.mitosis import mitosis_samples
    from histoscope.mitosis.detect import evaluate_detection
    from histoscope.train.mitosis import MitosisTrainConfig, count_parameters, evaluate_patches, train_detector, train_mitosis
    from histoscope.train.sampling import bootstrap_negatives

    out = Path(args.out)
    data = mitosis_samples(args.data, seed=args.seed)
    cfg = MitosisTrainConfig(epochs=args.epochs, ensemble=args.ensemble, seed=args.seed)
    t0 = time.perf_counter()
    res = train_mitosis(data, cfg, out_dir=out, resume=True, verbose=verbose)
    weights = res["negative_weights"]
    # dense detection for the rows that make the detector (the ablation rows: patch level only, to save CPU time)
    rows: list[tuple[str, torch.nn.Module, bool]] = [("easy model (uniform negatives), RCSEHBG", res["easy"], False)]
    w0 = bootstrap_negatives(weights, rng=cfg.seed + 0) if cfg.ensemble > 1 else weights
    for aug in [a for a in args.ablation.split(",") if a]:
        c = MitosisTrainConfig(**{**cfg.__dict__, "augment": aug})
        m = train_detector(data, out_dir=out / f"single_{aug}", width=cfg.width, config=c, negative_weights=w0, seed_offset=0, resume=True, verbose=verbose)
        rows.append((f"single CNN, hard negatives, {aug}", m, False))
    rows.append(("single CNN, hard negatives, RCSEHBG", res["members"][0], True))
    if cfg.ensemble > 1:
        rows.append((f"ensemble of {cfg.ensemble}, RCSEHBG", res["ensemble"], True))
    from histoscope.train.mitosis import _probs  # the ensemble's soft targets, as train_mitosis computes them

    soft = _probs(res["ensemble"], data, data.subset("train"), cfg, verbose)
    for g in [float(s) for s in args.students.split(",") if s]:
        d = out / ("student" if g == 0.6 else f"student_{g:g}")
        m = train_detector(data, out_dir=d, width=g, config=cfg, negative_weights=weights, soft_targets=soft, seed_offset=50, resume=True, verbose=verbose)
        rows.append((f"student gamma={g:g} (distilled)", m, True))
    train_s = time.perf_counter() - t0

    table = []
    for name, model, dense in rows:
        ev = evaluate_patches(model, data)
        r = {
            "model": name,
            "parameters": count_parameters(model),
            "patch F1": ev["all"]["f1"],
            "patch AUROC": ev["all"]["auroc"],
            "same-source AUROC": ev["same_source"]["auroc"],
            "same-source F1": ev["same_source"]["f1"],
        }
        if dense:
            det = evaluate_detection(model, data, verbose=verbose)
            slug = name.split(" (")[0].replace(" ", "_").replace(",", "").replace("=", "")
            det["curve"].to_csv(out / f"f1_curve_{slug}.csv", index=False)
            from histoscope.metrics.plots import plot_f1_curve

            plot_f1_curve(det["curve"], out / f"f1_curve_{slug}.png", title=f"{name}: detection within 8 um (AMi-Br + MoNuSeg test)")
            a, b = det["at_0.8"], det["best"]
            r.update(
                {
                    "det P@0.8": a["precision"], "det R@0.8": a["recall"], "det F1@0.8": a["f1"],
                    "FP/mm2 MoNuSeg@0.8": a["fp_per_mm2_monuseg"],
                    "best det F1": b["f1"], "best threshold": b["threshold"],
                }
            )  # fmt: skip
        table.append(r)
        if verbose:
            print(r, flush=True)
    frame = pd.DataFrame(table)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "table3.csv", index=False)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = "\n".join(["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)] + ["| " + " | ".join(fmt(v) for v in rec) + " |" for rec in frame.itertuples(index=False)])
    (out / "table3.md").write_text(md + "\n")
    (out / "table3.json").write_text(json.dumps({"rows": table, "train_seconds": train_s, "test_patients": int(data.subset("test")["group"].nunique())}, indent=2, default=float))
    print(md)


if __name__ == "__main__":
    main()
