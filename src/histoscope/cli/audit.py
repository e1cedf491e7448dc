"""``histoscope audit one-pixel``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from .options import quiet, seed


def _read_image(path: str, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise click.BadParameter(f"{path}: not a readable image ({exc})", param_hint="IMAGES") from None
    if size is None:
        return img
    h, w = img.shape[:2]
    if h < size or w < size:
        raise click.BadParameter(f"{path}: {w} x {h} px is smaller than the {size} x {size} px the model takes", param_hint="IMAGES")
    y, x = (h - size) // 2, (w - size) // 2  # centre crop
    return np.ascontiguousarray(img[y : y + size, x : x + size])


@click.group()
def audit() -> None:
    """Audit models: one-pixel attacks and confidence maps."""


@audit.command("one-pixel")
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--model", default=None, help="Bundled model name or checkpoint (default: the bundled mitosis_detector).")
@click.option("--url", default=None, help="Attack a model served over HTTP instead (histoscope serve).")
@click.option("--mitosis-data", type=click.Path(exists=True, file_okay=False, path_type=str), default=None, help="Attack real held-out patches from this data folder (../shared/data): --per-class mitoses (lowered) and non-mitoses (raised).")
@click.option("--per-class", type=click.IntRange(min=1), default=10, show_default=True, help="Patches per class with --mitosis-data.")
@click.option("--direction", type=click.Choice(["auto", "decrease", "increase", "both", "untargeted", "targeted"]), default="auto", show_default=True, help="auto: lower the class score of images predicted as the class, raise it for the others (for --mitosis-data: by label).")
@click.option("--class", "cls", default=None, help="Class whose score moves (default: the last, e.g. mitosis); the target class of a targeted attack.")
@click.option("--criterion", default="decision", show_default=True, help="decision (0.5), paper (below 0.9 / above 0.1) or DOWN,UP thresholds.")
@click.option("--popsize", type=click.IntRange(min=4), default=400, show_default=True)
@click.option("--generations", type=click.IntRange(min=0), default=100, show_default=True, help="Maximum DE generations.")
@click.option("--f", "f_scale", type=click.FloatRange(0, 2, min_open=True), default=0.5, show_default=True, help="DE mutation factor F.")
@click.option("--maps", type=click.IntRange(min=0), default=2, show_default=True, help="Brute-force confidence maps for this many images (the first successful and failed ones).")
@click.option("--colour-step", type=click.IntRange(1, 255), default=85, show_default=True, help="Confidence-map colours: every k-th value per channel incl. 255 (5 = the paper's 140,608 colours).")
@click.option("--mode", type=click.Choice(["auto", "plain", "incremental"]), default="auto", show_default=True, help="Scoring: incremental (exact, faster) where the model allows it.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-audit", show_default=True)
@seed
@quiet
def one_pixel(images, model, url, mitosis_data, per_class, direction, cls, criterion, popsize, generations, f_scale, maps, colour_step, mode, device, out, seed, quiet):
    """One-pixel attacks (differential evolution) against a classifier, with the one-pixel
    paper's chromatic, spatial and periodicity analyses and confidence maps.

    IMAGES are RGB image files (centre-cropped to the model's input size). Writes OUT/report.html,
    OUT/attacks.csv (every attack), OUT/maps/*.npz (confidence maps) and the figures.
    """
    from ..report.audit import safe_filename, write_audit_report
    from ..robustness import Criterion, DEConfig, as_target, attack_images
    from ..robustness.confidence import confidence_maps
    from ..robustness.scoring import colour_grid

    if model is not None and url is not None:
        raise click.UsageError("give --model or --url, not both")
    if not images and mitosis_data is None:
        raise click.UsageError("give IMAGES or --mitosis-data")
    try:
        crit = Criterion.named(tuple(float(v) for v in criterion.split(",")) if "," in criterion else criterion)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--criterion") from None
    try:
        target = as_target(url if url is not None else model, device=device)
    except (ValueError, ConnectionError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    size = target.input_size
    t0 = time.perf_counter()
    imgs, names, labels = [], [], []
    if mitosis_data is not None:
        from ..datasets.mitosis import audit_patches, mitosis_samples

        mpp = getattr(getattr(getattr(target, "module", None), "config", None), "mpp", None) or 0.25
        try:
            d = mitosis_samples(mitosis_data, patch=size or 64, mpp=mpp, seed=0)  # seed 0: the split the bundled models were trained on
            imgs, names, lab = audit_patches(d, per_class=per_class, seed=seed)
        except (FileNotFoundError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        labels = list(lab)
    for p in images:
        imgs.append(_read_image(p, size))
        names.append(Path(p).name)
        labels.append(None)
    c = target.class_index(cls) if cls is not None else len(target.classes) - 1 if target.classes else None
    # directions
    dirs: list[str] = []
    expanded_imgs, expanded_names = [], []
    for img, nm, lab in zip(imgs, names, labels):
        if direction == "both":
            todo = ["decrease", "increase"]
        elif direction == "auto":
            if lab is not None:
                todo = ["decrease" if lab == 1 else "increase"]
            else:
                from ..utils.convert import image_to_tensor

                p = target(image_to_tensor(img)[None].to(target.device))[0]
                todo = ["decrease" if int(p.argmax()) == (c if c is not None else p.shape[0] - 1) else "increase"]
        else:
            todo = [direction]
        for d_ in todo:
            dirs.append(d_)
            expanded_imgs.append(img)
            expanded_names.append(nm)
    t_load = time.perf_counter() - t0
    de = DEConfig(popsize=popsize, max_generations=generations, f=f_scale)
    t1 = time.perf_counter()
    q0 = target.queries
    table = attack_images(target, expanded_imgs, expanded_names, direction=dirs, target_class=cls, criterion=crit, config=de, mode=mode, seed=seed, verbose=not quiet)
    t_attack = time.perf_counter() - t1
    queries = target.queries - q0
    # confidence maps for the first successful and failed attacks, alternating
    outp = Path(out)
    (outp / "maps").mkdir(parents=True, exist_ok=True)
    chosen: list[int] = []
    app = table[table["applicable"].astype(bool)]
    ok_idx, bad_idx = list(app.index[app["success"].astype(bool)]), list(app.index[~app["success"].astype(bool)])
    while len(chosen) < maps and (ok_idx or bad_idx):
        for pool in (ok_idx, bad_idx):
            if pool and len(chosen) < maps:
                chosen.append(pool.pop(0))
    map_items = []
    t2 = time.perf_counter()
    cset = colour_grid(colour_step)
    for i in chosen:
        m = confidence_maps(target, expanded_imgs[i], colours=cset, class_index=c, mode=mode, checkpoint=outp / "maps" / f"checkpoint_{i}.npz", verbose=not quiet)
        m.save(outp / "maps" / f"{i:03d}_{safe_filename(expanded_names[i])}_{dirs[i]}.npz")
        (outp / "maps" / f"checkpoint_{i}.npz").unlink(missing_ok=True)
        map_items.append((f"{expanded_names[i]} ({dirs[i]})", expanded_imgs[i], m, table.loc[i].to_dict()))
    t_maps = time.perf_counter() - t2
    settings = {
        "model": target.name,
        "classes": ", ".join(target.classes),
        "images": len(imgs),
        "attacks": len(table),
        "DE": f"population {popsize}, up to {generations} generations, F {f_scale}, early stop",
        "criterion": f"decrease below {crit.down}, increase above {crit.up}",
        "scoring mode": mode,
        "confidence-map colours": f"{len(cset)} (step {colour_step})",
        "seed": seed,
        "queries": queries,
        "queries per second": round(queries / t_attack, 1) if t_attack > 0 else None,
    }
    report = write_audit_report(outp, table, shape=expanded_imgs[0].shape[:2], model=target.name, settings=settings, maps=map_items, timings={"load": t_load, "attacks": t_attack, "confidence maps": t_maps})
    (outp / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    app = table[table["applicable"].astype(bool)]
    click.echo(f"{int(app['success'].sum())}/{len(app)} attacks succeeded ({queries} queries, {queries / max(t_attack, 1e-9):.0f}/s); report: {report}")

