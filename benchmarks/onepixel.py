"""One-pixel audit measurements (issue 6), side by side in one run, on real held-out patches.

Parts (``--part``, default all):

``peers``
    histoscope's DE attack vs torchattacks.OnePixel and ART's PixelAttack on the same model,
    images (held-out mitosis patches the model calls mitosis) and query budget (population
    400, ``--peer-generations``): success rate (decision flips below 0.5) and model queries/s.
``bruteforce``
    Brute-force confidence maps, plain vs incremental scoring, on one real patch: evaluations/s,
    the max difference between the two maps, and what a full 64 x 64 map with the paper's
    140,608 colours would take at that rate.
``maps``
    Full confidence maps (64 colours) of ``--map-images`` held-out mitoses per model: the
    mean one-pixel score range on even/even pixels over that on the others (the
    checkerboard a stride-2 first layer leaves; 1 = none).
``share``
    Per model (bundled mitosis_detector, mitosis_detector_stride2): the share of held-out
    patches whose decision one pixel flips, per direction (mitosis-to-normal on mitoses,
    normal-to-mitosis on non-mitoses), full budget (population 400, 100 generations), and
    the even/even share of the best attack pixels.

Needs ../shared/data and the bench extra (``pip install -e .[bench]``) for the peers.

    python benchmarks/onepixel.py --data ../shared/data --out benchmarks/out/onepixel
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histoscope.datasets.mitosis import audit_patches, mitosis_samples
from histoscope.robustness import DEConfig, TorchTarget, as_target, attack_images, one_pixel_attack
from histoscope.robustness.analysis import map_parity, periodicity_table
from histoscope.robustness.confidence import PAPER_COLOUR_STEP, confidence_maps
from histoscope.robustness.scoring import colour_grid
from histoscope.utils.convert import image_to_tensor
from histoscope.utils.seed import seed_everything


class Counted(torch.nn.Module):
    """Counts the images the peers' attacks feed the model."""

    def __init__(self, model: torch.nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.model, self.scale, self.queries = model, scale, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.queries += x.shape[0]
        return self.model(x / self.scale)


def p_mitosis(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x), 1)[:, 1].numpy()


def peers(model_name: str, images: list[np.ndarray], generations: int, seed: int) -> pd.DataFrame:
    import torchattacks
    from art.attacks.evasion import PixelAttack
    from art.estimators.classification import PyTorchClassifier

    target = as_target(model_name)
    model = target.module
    x = image_to_tensor(np.stack(images))
    labels = torch.ones(len(images), dtype=torch.long)
    rows = []
    # histoscope, both scoring modes
    for mode in ("incremental", "plain"):
        q0, t0 = target.queries, time.perf_counter()
        res = [one_pixel_attack(target, im, direction="decrease", config=DEConfig(popsize=400, max_generations=generations), mode=mode, seed=seed + i) for i, im in enumerate(images)]
        dt = time.perf_counter() - t0
        rows.append({"method": f"histoscope ({mode})", "images": len(images), "successes": sum(r.success for r in res), "queries": target.queries - q0, "seconds": dt})
    # torchattacks: popsize 400 -> 400 // 5 parameters = 80 members per parameter = a population of 400
    counted = Counted(model).eval()
    seed_everything(seed)
    atk = torchattacks.OnePixel(counted, pixels=1, steps=generations, popsize=400, inf_batch=400)
    t0 = time.perf_counter()
    adv = atk(x, labels)
    dt = time.perf_counter() - t0
    rows.append({"method": "torchattacks.OnePixel", "images": len(images), "successes": int((p_mitosis(model, adv) < 0.5).sum()), "queries": counted.queries, "seconds": dt})
    # ART PixelAttack (DE, population 400); pixels in 0..255
    counted = Counted(model, scale=255.0).eval()
    clf = PyTorchClassifier(model=counted, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, *images[0].shape[:2]), nb_classes=2, clip_values=(0.0, 255.0))
    art = PixelAttack(clf, th=1, es=1, max_iter=generations, targeted=False, verbose=False)  # th: one pixel
    seed_everything(seed)
    t0 = time.perf_counter()
    # (ART refuses explicit labels for two-class models; untargeted on its own predictions = mitosis here)
    adv = art.generate((x * 255).numpy())
    dt = time.perf_counter() - t0
    rows.append({"method": "ART PixelAttack", "images": len(images), "successes": int((p_mitosis(model, torch.from_numpy(adv).float() / 255) < 0.5).sum()), "queries": counted.queries, "seconds": dt})
    df = pd.DataFrame(rows)
    df["success rate"] = df["successes"] / df["images"]
    df["queries/s"] = df["queries"] / df["seconds"]
    return df


def bruteforce(model_name: str, image: np.ndarray, colour_step: int, rows_step: int) -> dict:
    target = as_target(model_name)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h:rows_step, 0:w]
    pixels = np.stack([yy.ravel(), xx.ravel()], 1)
    out = {}
    maps = {}
    for mode in ("plain", "incremental"):
        m = confidence_maps(target, image, colours=colour_step, pixels=pixels, mode=mode, verbose=False)
        maps[mode] = m
        out[f"{mode} evaluations/s"] = m.evaluations_per_second
    a, b = maps["plain"], maps["incremental"]
    out["max |plain - incremental|"] = float(max(np.nanmax(np.abs(getattr(a, k) - getattr(b, k))) for k in ("min", "max", "mean")))
    out["ratio"] = out["incremental evaluations/s"] / out["plain evaluations/s"]
    out["evaluations each"] = a.evaluations
    paper = h * w * len(colour_grid(PAPER_COLOUR_STEP))
    out["paper map (64x64 x 140,608 colours) hours, incremental"] = paper / out["incremental evaluations/s"] / 3600
    out["paper map hours, plain"] = paper / out["plain evaluations/s"] / 3600
    return out


def share(model_name: str, images: list[np.ndarray], names: list[str], labels: np.ndarray, generations: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    target = as_target(model_name)
    dirs = ["decrease" if lab == 1 else "increase" for lab in labels]
    t0 = time.perf_counter()
    q0 = target.queries
    tab = attack_images(target, images, names, direction=dirs, config=DEConfig(popsize=400, max_generations=generations), seed=seed, verbose=True)
    dt = time.perf_counter() - t0
    tab["model"] = model_name
    rows = []
    for d, g in tab.groupby("direction"):
        app = g[g["applicable"]]
        paper_ok = (app["best_score"] < 0.9) if d == "decrease" else (app["best_score"] > 0.1)
        paper_app = (app["original_score"] >= 0.9) if d == "decrease" else (app["original_score"] <= 0.1)
        per_all = periodicity_table(g, successful_only=False)
        per_ok = periodicity_table(g)
        rows.append(
            {
                "model": model_name,
                "direction": "mitosis-to-normal" if d == "decrease" else "normal-to-mitosis",
                "patches": len(g),
                "correctly classified (attacked)": len(app),
                "flipped at 0.5": int(app["success"].sum()),
                "flip share": float(app["success"].mean()) if len(app) else float("nan"),
                "paper criterion (from >=0.9 below 0.9 / from <=0.1 above 0.1)": f"{int((paper_ok & paper_app).sum())}/{int(paper_app.sum())}",
                "mean |score change|": float(app["score_change"].abs().mean()),
                "even/even share, all best pixels": float(per_all["even/even share"].iloc[-1]),
                "even/even share, successful": float(per_ok["even/even share"].iloc[-1]),
                "mean queries": float(app["queries"].mean()),
            }
        )
    summary = pd.DataFrame(rows)
    summary["queries/s"] = (target.queries - q0) / dt
    return summary, tab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="benchmarks/out/onepixel")
    ap.add_argument("--part", choices=["all", "peers", "bruteforce", "maps", "share"], default="all")
    ap.add_argument("--map-images", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=15, help="Held-out patches per class for the share measurement.")
    ap.add_argument("--peer-images", type=int, default=6)
    ap.add_argument("--peer-generations", type=int, default=15)
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--colour-step", type=int, default=85)
    ap.add_argument("--rows-step", type=int, default=4, help="Brute force over every pixel of every k-th row.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = mitosis_samples(args.data, patch=64, seed=0)  # the bundled models' split
    images, names, labels = audit_patches(d, per_class=args.per_class, seed=args.seed)
    results: dict = {}
    if args.part in ("all", "peers"):
        target = as_target("mitosis_detector")
        pos = [im for im, lab in zip(images, labels) if lab == 1 and float(target(image_to_tensor(im)[None])[0, 1]) >= 0.5][: args.peer_images]
        for model in ("mitosis_detector", "mitosis_detector_stride2"):
            df = peers(model, pos, args.peer_generations, args.seed)
            df.insert(0, "model", model)
            print(df.to_string(index=False), flush=True)
            df.to_csv(out / f"peers_{model}.csv", index=False)
            results[f"peers_{model}"] = df.to_dict("records")
    if args.part in ("all", "bruteforce"):
        mit = images[int(np.flatnonzero(labels == 1)[0])]
        for model in ("mitosis_detector", "mitosis_detector_stride2"):
            r = bruteforce(model, mit, args.colour_step, args.rows_step)
            print(model, json.dumps(r, indent=1), flush=True)
            results[f"bruteforce_{model}"] = r
    if args.part in ("all", "maps"):
        rows = []
        mits = [im for im, lab in zip(images, labels) if lab == 1][: args.map_images]
        for model in ("mitosis_detector", "mitosis_detector_stride2"):
            target = as_target(model)
            for i, im in enumerate(mits):
                m = confidence_maps(target, im, colours=args.colour_step, verbose=False)
                m.save(out / f"map_{model}_{i}.npz")
                rows.append({"model": model, "image": i, **map_parity(m.min, m.max), "evaluations/s": m.evaluations_per_second})
        df = pd.DataFrame(rows)
        print(df.to_string(index=False), flush=True)
        df.to_csv(out / "map_parity.csv", index=False)
        results["maps"] = df.to_dict("records")
    if args.part in ("all", "share"):
        summaries = []
        for model in ("mitosis_detector", "mitosis_detector_stride2"):
            s, tab = share(model, images, names, labels, args.generations, args.seed)
            tab.to_csv(out / f"attacks_{model}.csv", index=False)
            print(s.to_string(index=False), flush=True)
            summaries.append(s)
        pd.concat(summaries).to_csv(out / "share.csv", index=False)
        results["share"] = pd.concat(summaries).to_dict("records")
    (out / f"results_{args.part}.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
