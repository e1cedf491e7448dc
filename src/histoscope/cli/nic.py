"""``histoscope nic ...``: Neural Image Compression (compress slides, train encoders and slide models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from .options import quiet, report_failures, scheduler, seed, slide_mpp, workers

KINDS = ("mean_rgb", "vae", "contrastive", "bigan", "supervised")


@click.group()
def nic() -> None:
    """Neural Image Compression (Tellez et al.): slides -> embedding grids -> slide-level CNN."""


# ------------------------------------------------------------------ compress


@nic.command("compress")
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--encoder", default="contrastive", show_default=True, help="Bundled encoder (mean_rgb, vae, contrastive, bigan, supervised) or an encoder file.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="nic-out", show_default=True, help="Folder for <slide>.zarr, <slide>-embedding.png and compress.html.")
@click.option("--patch", type=click.IntRange(min=1), default=None, help="Patch side P in px (default: the encoder's).")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Grid step S in px (default: P).")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.05, show_default=True, help="Patches with less tissue are skipped (zeros).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Compress again slides whose store is already complete.")
@slide_mpp
@workers
@scheduler
@quiet
def compress_cmd(slides, encoder, out, patch, stride, min_tissue, batch_size, device, force, slide_mpp, workers, scheduler, quiet) -> None:
    """Compress SLIDES into grids of patch codes (one zarr store per slide), as Dask jobs.

    Defaults from the paper: P = S = 128 px at 0.5 um/px (the encoder's own patch size and
    resolution); background patches are skipped and left as zeros.
    """
    from ..distributed.runner import run_jobs
    from ..infer.compress import compress_file
    from ..models.nic import load_encoder
    from ..report.html import Link, write_report

    load_encoder(encoder)  # a bad name or file fails here, once, with its message
    results = run_jobs(
        compress_file, list(slides), workers=workers, scheduler=scheduler, verbose=not quiet, desc="compress",
        out_dir=out, encoder=encoder, slide_mpp=slide_mpp, patch=patch, stride=stride, min_tissue=min_tissue,
        batch_size=batch_size, device=device, force=force,
    )
    rows, figures = [], []
    from PIL import Image

    for r in results:
        if r.ok:
            v = r.value
            done = " (already complete: kept)" if v["skipped"] else ""
            click.echo(f"{r.item}: {v['grid']} grid, {v['patches_encoded']} of {v['patches_total']} patches encoded -> {v['store']}{done}")
            rows.append([v["slide"], v["grid"], v["patches_encoded"], v["patches_total"], v["seconds"], Link(Path(v["store"]).name, Path(v["store"]).name), "kept" if v["skipped"] else "ok"])
            figures.append((f"{v['slide']}: first 3 principal components of the codes as RGB (white: background)", np.asarray(Image.open(v["picture"]).convert("RGB"))))
        else:
            rows.append([Path(r.item).name, "", "", "", "", "", f"failed: {r.error}"])
    write_report(
        Path(out) / "compress.html",
        title="Compressed slides (Neural Image Compression)",
        subtitle=f"encoder {encoder}",
        figures=figures,
        sections=[("Slides", rows, ["slide", "grid (rows x cols x C)", "patches encoded", "patches", "seconds", "store", "status"])],
    )
    click.echo(f"report: {Path(out) / 'compress.html'}")
    raise SystemExit(report_failures(results))


# ------------------------------------------------------------------ train-encoder


@nic.command("train-encoder")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("slides", nargs=-1, type=click.Path(exists=True, path_type=str))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str), required=True, help="Encoder file to write (.pt; a .json card beside it).")
@click.option("--patch", type=click.IntRange(min=4), default=128, show_default=True)
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Patch resolution in um/px.")
@click.option("--code-size", type=click.IntRange(min=1), default=128, show_default=True, help="C, the code length.")
@click.option("--width", type=click.IntRange(min=1), default=32, show_default=True, help="Channels of the first conv layer.")
@click.option("--patches", type=click.IntRange(min=16), default=4000, show_default=True, help="Training patches sampled in tissue.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--gamma", type=float, default=1.0, show_default=True, help="VAE: weight of the KL term.")
@click.option("--classifier", default=None, help="supervised: a trained tissue classifier (bundled name or `histoscope train tissue` checkpoint); default colorectal_grader.")
@click.option("--half", is_flag=True, help="Store float16 weights (half the file), as the bundled encoders do.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--slide-mpp", type=float, default=None, help="Microns per pixel of the SLIDES that do not record it (e.g. 0.25 for 40x PNG fields).")
@quiet
@seed
def train_encoder_cmd(kind, slides, out_path, patch, mpp, code_size, width, patches, epochs, batch_size, lr, gamma, classifier, half, device, slide_mpp, quiet, seed) -> None:
    """Train a patch encoder of KIND on SLIDES (no labels) and write it with a model card.

    vae, contrastive and bigan learn from patches sampled in the tissue of SLIDES
    (contrastive: pairs of the same patch vs adjacent patches and patches of another
    slide, so give it two slides or more); mean_rgb has nothing to learn; supervised wraps
    the features of a tissue classifier trained with `histoscope train tissue`.
    """
    import sys

    from ..models.nic import SupervisedEncoder, create_encoder, save_encoder

    command = "histoscope nic train-encoder " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else ""
    card: dict[str, Any] = {"kind": kind, "seed": seed, "command": command, "data": list(slides)}
    if kind == "supervised":
        from ..models.pretrained import resolve_model

        name = classifier or "colorectal_grader"
        enc = SupervisedEncoder(resolve_model(name))
        card["classifier"] = name
    elif kind == "mean_rgb":
        enc = create_encoder("mean_rgb", patch_size=patch, mpp=mpp)
    else:
        if not slides:
            raise click.UsageError(f"train-encoder {kind} needs SLIDES to sample patches from")
        if kind == "contrastive" and len(slides) < 2:
            raise click.UsageError("the contrastive encoder needs two slides or more (25% of its 'different' pairs come from another slide)")
        from ..slide.reader import open_slide
        from ..train.nic import sample_patch_pool, train_encoder

        opened = []
        for s in slides:  # --slide-mpp only for sources that do not record their resolution
            sl = open_slide(s)
            if sl.mpp is None and slide_mpp is not None:
                sl.close()
                sl = open_slide(s, mpp=slide_mpp)
            opened.append(sl)
        try:
            pool = sample_patch_pool(opened, patches, patch=patch, mpp=mpp, neighbours=kind == "contrastive", seed=seed, verbose=not quiet)
        finally:
            for s in opened:
                s.close()
        enc, history = train_encoder(kind, pool, code_size=code_size, width=width, epochs=epochs, batch_size=batch_size, lr=lr, gamma=gamma, seed=seed, device=device, verbose=not quiet)
        card["history"] = {k: [round(float(x), 5) for x in v] for k, v in history.items()}
        card["patches"] = len(pool)
    path = save_encoder(enc, out_path, card=card, half=half)
    click.echo(f"{kind} encoder (C = {enc.code_size}, P = {enc.patch_size} px at {enc.mpp} um/px) -> {path}")


# ------------------------------------------------------------------ evaluate-encoders


@nic.command("evaluate-encoders")
@click.option("--encoder", "encoders", multiple=True, required=True, help="Encoder name or file (repeat). 'NAME=FILE' gives it a row name.")
@click.option("--task", type=click.Choice(["glas", "digits"]), default="glas", show_default=True, help="glas: benign vs malignant GlaS gland patches, patient-held-out test; digits: scikit-learn's 8x8 digits.")
@click.option("--data", type=click.Path(exists=True, path_type=str), default=None, help="glas: the GlaS labels.csv (default ../shared/data/glas/labels.csv).")
@click.option("--folds", type=click.IntRange(min=2), default=4, show_default=True, help="glas: patient-grouped cross-validation folds; the table pools the test predictions of all folds.")
@click.option("--test-patients", default=None, help="glas: one split instead of folds, these patient ids held out (e.g. 2,4,9).")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="nic-encoders", show_default=True)
@click.option("--record", is_flag=True, help="Write each encoder's row into the card beside its file (bundled encoders: their model cards).")
@quiet
@seed
def evaluate_encoders_cmd(encoders, task, data, folds, test_patients, out, record, quiet, seed) -> None:
    """The paper's Table 1: each frozen encoder + a small MLP on a labelled patch task, accuracy per class."""
    from ..models.nic import load_encoder
    from ..train.nic import evaluate_encoders

    named: dict[str, Any] = {}
    for e in encoders:
        name, _, src = e.partition("=") if "=" in e else (e, "", e)
        named[name] = load_encoder(src)
    sizes = {(enc.patch_size, enc.mpp) for n, enc in named.items() if not getattr(enc, "any_size", False)}
    if task == "digits":
        from ..datasets.digits import digit_bank

        (tr_x, tr_y), (te_x, te_y) = digit_bank("train"), digit_bank("test")
        rgb = lambda a: np.repeat(a[..., None], 3, axis=3)  # noqa: E731
        train, test, classes = (rgb(tr_x), tr_y), (rgb(te_x), te_y), [str(k) for k in range(10)]
        if any(p != 8 for p, _ in sizes):
            raise click.UsageError(f"the digits task has 8 px patches; encoders for {sorted(sizes)} do not fit")
    else:
        if len(sizes) > 1:
            raise click.UsageError(f"encoders of different patch sizes / resolutions cannot share one patch set: {sorted(sizes, key=str)}")
        P, mpp = next(iter(sizes)) if sizes else (128, 0.5)
        X, y, patients, classes = _glas_patches(data, P, mpp, seed)
        if test_patients:
            held = np.isin(patients, [p.strip() for p in test_patients.split(",") if p.strip()])
            if not held.any() or held.all():
                raise click.UsageError(f"test patients {test_patients} leave an empty train or test set (patients: {sorted(set(patients))})")
            splits = [(np.flatnonzero(~held), np.flatnonzero(held))]
        else:
            from sklearn.model_selection import StratifiedGroupKFold

            splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, y, patients))
    if task == "digits":
        table = evaluate_encoders(named, train, test, classes, seed=seed, verbose=not quiet)
        n_train, n_test = len(train[1]), len(test[1])
    else:
        tables = [evaluate_encoders(named, (X[tr], y[tr]), (X[te], y[te]), classes, seed=seed, verbose=not quiet) for tr, te in splits]
        table = _pool_folds(tables, [y[te] for _, te in splits], classes)
        n_train, n_test = int(np.mean([len(tr) for tr, _ in splits])), len(y)
        task = f"glas benign vs malignant, {len(splits)} patient-grouped fold(s), {len(set(patients))} patients"
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    table.to_csv(outp / "encoders.csv")
    md = table.to_markdown(floatfmt=".3f") if _has_tabulate() else table.to_string(float_format=lambda v: f"{v:.3f}")
    (outp / "encoders.md").write_text(f"Task: {task}; train {n_train} / test {n_test} patches; seed {seed}\n\n{md}\n")
    click.echo(md)
    click.echo(f"table: {outp / 'encoders.csv'}, {outp / 'encoders.md'}")
    if record:
        import sys

        from ..models.nic import bundled_encoder_path, record_encoder_metrics

        command = "histoscope nic " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "histoscope nic evaluate-encoders"
        for name, enc in named.items():
            src = dict(e.partition("=")[::2] for e in encoders if "=" in e).get(name, name)
            path = Path(src) if Path(src).is_file() else bundled_encoder_path(src.removeprefix("nic_"))
            if not path.with_suffix(".json").is_file():
                click.echo(f"{name}: no card beside {path}; not recorded")
                continue
            row = table.loc[name]
            tm = {"command": command, "task": f"{task}: train {n_train} / test {n_test} patches, seed {seed}",
                  "columns": ["encoder", *[str(c) for c in table.columns]], "row": [name, *[v.item() if hasattr(v, "item") else v for v in row.to_numpy()]]}
            click.echo(f"recorded in {record_encoder_metrics(path, tm)}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _pool_folds(tables: list, tests: list[np.ndarray], classes: list[str]):
    """One Table 1 from per-fold tables: per-class accuracies pooled over all test patches."""
    import pandas as pd

    rows = {}
    for name in tables[0].index:
        correct = np.zeros(len(classes))
        support = np.zeros(len(classes))
        for t, yt in zip(tables, tests):
            n = np.bincount(yt, minlength=len(classes)).astype(float)
            acc = np.array([t.loc[name, c] if n[k] else 0.0 for k, c in enumerate(classes)], float)
            correct += np.nan_to_num(acc) * n
            support += n
        per = correct / np.maximum(support, 1)
        rows[name] = {**dict(zip(classes, per)), "accuracy": correct.sum() / support.sum(), "balanced_accuracy": per.mean(),
                      "code_size": int(tables[0].loc[name, "code_size"]), "n_test": int(support.sum())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("encoder")


def _glas_patches(data: str | None, P: int, mpp: float | None, seed: int):
    """Benign / malignant patches of GlaS gland annotations, with each patch's patient."""
    from ..slide.reader import open_slide
    from ..tiles.extract import iter_tiles
    from ..tiles.labelled import annotated_patches, read_label_table
    from ..train.tissue import PRESETS

    path = Path(data) if data else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "glas" / "labels.csv"
    if not path.is_file():
        raise click.UsageError(f"{path}: no GlaS label table (pass --data .../glas/labels.csv)")
    opts = PRESETS["glas"]
    images = read_label_table(path, label_column=opts["label_column"], group_column=opts["group_column"], annotation_column=opts["annotation_column"], classes=opts["classes"], mpp=opts["image_mpp"])
    mpp = None if mpp is None else max(mpp, images.mpp)  # GlaS is 0.62 um/px: no upsampling
    patches = annotated_patches(images, size=P, mpp=mpp, overlap=0.0, n_random=4, rng=seed)
    malignant = set(opts["positive_classes"])
    xs = []
    for item, rows in patches.groupby("item", sort=False):
        with open_slide(images.table.loc[item, "image"], mpp=images.mpp) as slide:
            xs.extend(zip(rows.index, iter_tiles(slide, rows.reset_index(drop=True), workers=1)))
    order = dict(xs)
    X = np.stack([order[i] for i in patches.index])
    y = np.array([1 if lab in malignant else 0 for lab in patches["label"]])
    return X, y, patches["group"].astype(str).to_numpy(), ["benign", "malignant"]


# ------------------------------------------------------------------ train (slide CNN)


def _read_labels(path: str, task: str) -> tuple[dict[str, Any], dict[str, str] | None]:
    """slide name -> label, and slide name -> patient when the table has a ``patient`` column."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise click.UsageError(f"{path}: cannot read the label table ({exc})") from None
    if not {"slide", "label"} <= set(table.columns):
        raise click.UsageError(f"{path}: the label table needs columns 'slide' and 'label', has {list(table.columns)}")
    labels = {str(s): (float(v) if task == "regression" else v) for s, v in zip(table["slide"], table["label"])}
    groups = {str(s): str(g) for s, g in zip(table["slide"], table["patient"])} if "patient" in table.columns else None
    return labels, groups


def _open_stores(stores: list[str]):
    from ..infer.compress import CompressedSlide

    try:
        return [CompressedSlide.open(s) for s in stores]
    except (ValueError, FileNotFoundError) as exc:  # names the store and the problem
        raise click.UsageError(str(exc)) from None


@nic.command("train")
@click.argument("stores", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str), help="CSV with columns slide (name, as in <slide>.zarr) and label; an optional patient column keeps a patient's slides in one fold.")
@click.option("--task", type=click.Choice(["classification", "regression"]), default="classification", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="nic-model", show_default=True)
@click.option("--crop", type=click.IntRange(min=4), default=64, show_default=True, help="R: side of the random training crops, in grid cells.")
@click.option("--test-crops", type=click.IntRange(min=1), default=8, show_default=True, help="T: test crops averaged (x 8 rotations/mirrors).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--folds", type=click.IntRange(min=3), default=4, show_default=True, help="Cross-validation folds (2 train, 1 validation, 1 test, rotated).")
@click.option("--width", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@quiet
@seed
def train_slide_cmd(stores, labels, task, out, crop, test_crops, epochs, folds, width, device, quiet, seed) -> None:
    """Train the slide-level CNN on compressed slides; report k-fold cross-validated AUC / Spearman."""
    from ..nic.model import save_slide_model
    from ..nic.train import cross_validate

    slides = _open_stores(list(stores))
    lab, patients = _read_labels(labels, task)
    names = [s.attrs["slide_name"] for s in slides]
    missing = [n for n in names if n not in lab]
    if missing:
        raise click.UsageError(f"{labels}: no label for {missing[:5]}")
    y_raw = [lab[n] for n in names]
    classes: list[str] | None = None
    if task == "classification":
        classes = sorted({str(v) for v in y_raw})
        y = np.array([classes.index(str(v)) for v in y_raw])
    else:
        y = np.asarray(y_raw, float)
    groups = [patients[n] for n in names] if patients else None
    res = cross_validate(slides, y, folds=folds, task=task, crop=crop, n_crops=test_crops, seed=seed, return_models=True, groups=groups, verbose=not quiet, epochs=epochs, width=width, device=device, n_outputs=len(classes) if classes else None)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    models = res.pop("models")
    for i, m in enumerate(models):
        save_slide_model(m, outp / f"fold{i}.pt", card={"classes": classes, "task": task, "seed": seed, "fold": i, "slides": names})
    (outp / "cv.json").write_text(json.dumps(_jsonable({**res, "slides": names, "classes": classes}), indent=2))
    click.echo(json.dumps(_jsonable(res.get("pooled", res.get("metrics", {}))), indent=2))
    click.echo(f"models: {outp}/fold*.pt; results: {outp / 'cv.json'}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


# ------------------------------------------------------------------ predict (+ Grad-CAM)


@nic.command("predict")
@click.argument("stores", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str), help="A slide model from `histoscope nic train`.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="nic-predictions", show_default=True)
@click.option("--crop", type=click.IntRange(min=4), default=None, help="R for test crops (default: the whole grid at once).")
@click.option("--test-crops", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--gradcam/--no-gradcam", default=True, show_default=True, help="Grad-CAM overlay of the first layer on the slide thumbnail.")
@click.option("--slide-dir", type=click.Path(exists=True, file_okay=False, path_type=str), default=None, help="Where the slides are, when they moved since compression.")
@click.option("--truth-masks", type=click.Path(exists=True, file_okay=False, path_type=str), default=None, help="Folder of <slide>.png ground-truth masks (any size, covering the slide): the post-processed Grad-CAM's Jaccard index goes in the table.")
@quiet
@seed
def predict_cmd(stores, model_path, out, crop, test_crops, gradcam, slide_dir, truth_masks, quiet, seed) -> None:
    """Slide-level predictions of compressed slides (+ Grad-CAM overlays and a report)."""
    import pandas as pd

    from ..nic.model import load_slide_model
    from ..nic.train import predict_slides

    model = load_slide_model(model_path)
    slides = _open_stores(list(stores))
    scores = predict_slides(model, slides, crop=crop, n_crops=test_crops, seed=seed, verbose=not quiet)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    card = getattr(model, "card", None) or {}
    classes = card.get("classes")
    rows = []
    for s, sc in zip(slides, np.atleast_2d(scores) if scores.ndim > 1 else scores[:, None]):
        row: dict[str, Any] = {"slide": s.attrs["slide_name"]}
        if model.task == "classification":
            names = classes or [str(k) for k in range(len(sc))]
            row.update({f"p_{n}": float(v) for n, v in zip(names, sc)})
            row["prediction"] = names[int(np.argmax(sc))]
        else:
            row["prediction"] = float(sc[0])
        rows.append(row)
    figures = []
    if gradcam or truth_masks:
        from ..nic.gradcam import jaccard, postprocess, slide_gradcam

        for s, row in zip(slides, rows):
            heat = slide_gradcam(model, s.load(), tissue=s.tissue)
            if gradcam:
                figures += _gradcam_figures(heat, s, outp, slide_dir)
            if truth_masks:
                truth = _truth_on_grid(Path(truth_masks) / f"{row['slide']}.png", s)
                row["gradcam_jaccard"] = float("nan") if truth is None else jaccard(postprocess(heat, tissue=s.tissue), truth)
    table = pd.DataFrame(rows)
    table.to_csv(outp / "predictions.csv", index=False)
    from ..report.html import write_report

    write_report(outp / "report.html", title="Slide-level predictions (NIC)", subtitle=f"model {model_path}", figures=figures,
                 sections=[("Predictions", [list(r.values()) for r in rows], list(rows[0].keys()))])
    click.echo(table.to_string(index=False))
    click.echo(f"predictions: {outp / 'predictions.csv'}; report: {outp / 'report.html'}")


def _truth_on_grid(path: Path, s) -> np.ndarray | None:
    """A ground-truth mask image (covering the slide) sampled at the grid's cell centres; None when absent."""
    from PIL import Image

    if not path.is_file():
        click.echo(f"{path}: no ground-truth mask; Jaccard left empty", err=True)
        return None
    try:
        mask = np.asarray(Image.open(path).convert("L")) > 0
    except Exception as exc:  # noqa: BLE001 - name the file
        raise click.UsageError(f"{path}: not a readable mask image ({exc})") from None
    rows, cols = s.shape[:2]
    x, y = s.cell_to_level0(np.arange(rows)[:, None], np.arange(cols)[None, :])
    W, H = s.attrs["slide_dimensions"]
    mh, mw = mask.shape
    u = np.clip((x * mw / W).astype(int), 0, mw - 1)
    v = np.clip((y * mh / H).astype(int), 0, mh - 1)
    return mask[v, u]


def _gradcam_figures(heat: np.ndarray, s, outp: Path, slide_dir: str | None) -> list:
    from PIL import Image

    from ..infer.compress import embedding_rgb
    from ..nic.gradcam import gradcam_overlay
    from ..slide.reader import open_slide

    name = s.attrs["slide_name"]
    src = Path(s.attrs["slide"]) if s.attrs.get("slide") else None
    if slide_dir and src is not None:
        src = Path(slide_dir) / src.name
    thumb = None
    if src is not None and src.is_file():
        try:
            with open_slide(src) as sl:
                thumb = sl.thumbnail(1024)
        except Exception:  # noqa: BLE001 - fall back to the embedding picture
            thumb = None
    if thumb is None:  # no slide file: draw on the embedding picture
        rgb = embedding_rgb(s)
        thumb = s.to_slide_image(rgb, (max(1, rgb.shape[1] * 8), max(1, rgb.shape[0] * 8)), fill=255)
    h, w = thumb.shape[:2]
    on_slide = s.to_slide_image(heat, (w, h), fill=0.0).astype(np.float32)
    over = gradcam_overlay(thumb, on_slide)
    Image.fromarray(over).save(outp / f"{name}-gradcam.png")
    return [(f"{name}: Grad-CAM of the first layer (eq. 7) on the slide", over)]
