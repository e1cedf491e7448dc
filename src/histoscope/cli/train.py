"""``histoscope train tissue`` and ``histoscope evaluate tissue``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .options import apply_options, quiet, seed


def _load_images(data: str, preset: str | None, label_column: str | None, group_column: str | None, annotation_column: str | None, classes: str | None, image_mpp: float | None) -> tuple[Any, dict[str, Any]]:
    from ..tiles.labelled import read_class_folders, read_label_table
    from ..train.tissue import PRESETS

    opts: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    if label_column:
        opts["label_column"] = label_column
    if group_column:
        opts["group_column"] = group_column
    if annotation_column:
        opts["annotation_column"] = annotation_column
    if classes:
        opts["classes"] = [c.strip() for c in classes.split(",")]
    if image_mpp:
        opts["image_mpp"] = image_mpp
    p = Path(data)
    try:
        if p.is_dir():
            images = read_class_folders(p, classes=opts.get("classes"), mpp=opts.get("image_mpp"))
        else:
            images = read_label_table(
                p,
                label_column=opts.get("label_column", "label"),
                group_column=opts.get("group_column"),
                annotation_column=opts.get("annotation_column"),
                classes=opts.get("classes"),
                mpp=opts.get("image_mpp"),
            )
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    return images, opts


data_options = [
    click.argument("data", type=click.Path(exists=True, path_type=str)),
    click.option("--preset", type=click.Choice(["glas"]), default=None, help="Read DATA as a known dataset (column names, classes, mpp)."),
    click.option("--label-column", default=None, help="Label column of a CSV table (default: label)."),
    click.option("--group-column", default=None, help="Patient column: splits never separate a patient."),
    click.option("--annotation-column", default=None, help="Column of annotation masks (patches >= --min-annotation annotated)."),
    click.option("--classes", default=None, help="Comma-separated class names, in label order."),
    click.option("--image-mpp", type=float, default=None, help="Microns per pixel of the images."),
    click.option("--size", type=click.IntRange(min=16), default=64, show_default=True, help="Patch side in pixels."),
    click.option("--mpp", type=float, default=None, help="Patch resolution in um/px (default: the images')."),
    click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True),
    click.option("--min-annotation", type=click.FloatRange(0, 1), default=0.5, show_default=True),
    click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto."),
]


@click.group()
def train() -> None:
    """Train models."""


@train.command("tissue")
@apply_options(data_options)
@click.option("--arch", default="small_cnn", show_default=True, help="small_cnn, resnet50, densenet121 or inception_v3.")
@click.option("--folds", type=click.IntRange(min=0), default=0, show_default=True, help="Patient-level k-fold cross-validation (0: one training run).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--augment", default="RCSHBG", show_default=True, help="Augmentation letters (R S E C H B G); '' for none.")
@click.option("--stain-normalize", "stain_norm", type=click.Choice(["none", "macenko"]), default="none", show_default=True, help="Normalise every patch's stain (Macenko, to the reference stains) in training and inference.")
@click.option("--n-random", type=click.IntRange(min=0), default=8, show_default=True, help="Random patches per image, besides the sliding window.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None, help="Local weights to fine-tune from.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True, help="DataLoader worker processes.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--test-patients", default=None, help="Comma-separated patients held out from training and evaluated at the end (OUT/test/).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=str), default=None, help="Also write a compact bundle (fp16 weights + JSON model card) of the best model here.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-train", show_default=True)
@seed
@quiet
def train_tissue_cmd(data, preset, label_column, group_column, annotation_column, classes, image_mpp, size, mpp, overlap, min_annotation, device, arch, folds, epochs, batch_size, lr, augment, stain_norm, n_random, weights, workers, resume, test_patients, export_path, out, seed, quiet):
    """Train a tissue classifier on DATA (a CSV of images and labels, or a folder per class).

    With --folds K, runs patient-level K-fold cross-validation and writes OUT/cv_summary.csv
    (patch- and image-level accuracy, macro precision/recall/specificity/NPV, AUROC, and the
    benign-versus-malignant accuracy for presets that define it).
    """
    from ..models import list_models
    from ..train import TrainConfig
    from ..train.tissue import PatchConfig, cross_validate, evaluate_tissue, train_tissue

    if arch not in list_models():
        raise click.BadParameter(f"unknown architecture {arch!r}; choose one of {list_models()}", param_hint="--arch")
    images, opts = _load_images(data, preset, label_column, group_column, annotation_column, classes, image_mpp)
    patch = PatchConfig(size=size, mpp=mpp, overlap=overlap, min_annotation=min_annotation, n_random=n_random, augment=augment, stain=None if stain_norm == "none" else stain_norm)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, num_workers=workers)
    positive = opts.get("positive_classes")
    if folds:
        summary = cross_validate(images, arch=arch, folds=folds, patch=patch, config=config, out_dir=out, positive_classes=positive, verbose=not quiet)
        cols = [c for c in ("fold", "patch_accuracy", "patch_auroc", "image_accuracy", "image_vote_accuracy", "binary_accuracy") if c in summary]
        click.echo(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        click.echo(f"wrote {Path(out) / 'cv_summary.csv'}")
        return
    test = None
    if test_patients:
        wanted = {t.strip() for t in test_patients.split(",") if t.strip()}
        groups = images.table["group"].astype(str)
        unknown = sorted(wanted - set(groups))
        if unknown:
            raise click.BadParameter(f"no images of patient(s) {unknown}; patients: {sorted(set(groups))}", param_hint="--test-patients")
        is_test = groups.isin(wanted).to_numpy()
        test, images = images.subset(is_test.nonzero()[0]), images.subset((~is_test).nonzero()[0])
    trained = train_tissue(images, arch=arch, patch=patch, config=config, out_dir=out, weights=weights, resume=resume, verbose=not quiet)
    res = trained["result"]
    click.echo(f"best epoch {res.best_epoch}: {res.best_path} ({trained['train_patches']} training / {trained['val_patches']} validation patches)")
    metrics: dict[str, Any] = {}
    if test is not None:
        ev = evaluate_tissue(trained["model"], test, patch=patch, out_dir=Path(out) / "test", positive_classes=positive, device=device)
        metrics = {
            "test_patients": sorted(set(test.table["group"].astype(str))),
            "test_images": len(test),
            "patch": ev["patch"].to_dict(),
            "image_mean": ev["image_mean"].to_dict(),
            "image_vote_accuracy": ev["image_vote_accuracy"],
        }
        if "binary_mean" in ev:
            metrics["binary_mean"] = ev["binary_mean"].to_dict()
        (Path(out) / "test" / "metrics.json").write_text(json.dumps(metrics, indent=2))
        click.echo(f"test patients {metrics['test_patients']}: patch accuracy {ev['patch'].accuracy:.3f}, image accuracy {ev['image_mean'].accuracy:.3f}")
    if export_path:
        from ..models.pretrained import export_bundle

        card = {
            "data": str(data),
            "preset": preset,
            "command": " ".join(["histoscope", *sys.argv[1:]]),
            "seed": seed,
            "patch": {"size": size, "mpp": mpp, "overlap": overlap, "min_annotation": min_annotation, "n_random": n_random, "augment": augment, "stain": patch.stain},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "best_epoch": res.best_epoch},
            "split": trained["split"],
            "test_metrics": metrics,
        }
        path = export_bundle(trained["model"], export_path, card=card)
        click.echo(f"exported {path}")


@click.group()
def evaluate() -> None:
    """Evaluate models."""


@evaluate.command("tissue")
@apply_options(data_options)
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str), help="A checkpoint (best.pt) or bundled model name.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-eval", show_default=True)
@quiet
def evaluate_tissue_cmd(data, preset, label_column, group_column, annotation_column, classes, image_mpp, size, mpp, overlap, min_annotation, device, model_path, out, quiet):
    """Patch- and image-level metrics, confusion matrices and ROC curves of a tissue model on DATA."""
    from ..train import load_checkpoint
    from ..train.tissue import PatchConfig, evaluate_tissue

    images, opts = _load_images(data, preset, label_column, group_column, annotation_column, classes, image_mpp)
    try:
        model = load_checkpoint(model_path, device=device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    cfg = model.config
    if list(cfg.classes) != list(images.classes):
        raise click.UsageError(f"{model_path}: the model's classes {cfg.classes} differ from the data's {images.classes}")
    patch = PatchConfig(size=cfg.input_size, mpp=cfg.mpp if mpp is None else mpp, overlap=overlap, min_annotation=min_annotation, stain=cfg.stain)
    ev = evaluate_tissue(model, images, patch=patch, out_dir=out, positive_classes=opts.get("positive_classes"), device=device, verbose=not quiet)
    report = {"patch": ev["patch"].to_dict(), "image_mean": ev["image_mean"].to_dict(), "image_vote_accuracy": ev["image_vote_accuracy"]}
    if "binary_mean" in ev:
        report["binary_mean"] = ev["binary_mean"].to_dict()
    Path(out, "metrics.json").write_text(json.dumps(report, indent=2))
    click.echo(str(ev["patch"]))
    click.echo(f"image level (mean probability): accuracy {ev['image_mean'].accuracy:.3f}; wrote {out}")
