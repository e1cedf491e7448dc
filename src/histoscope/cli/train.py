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


@train.command("rcnn")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--variant", type=click.Choice(["conv5", "conv4", "cascade"]), default="cascade", show_default=True, help="conv5: standard Faster R-CNN; conv4: conv5 dropped; cascade: MITOS-RCNN (conv3 + up-sampled conv4, two RPNs).")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True, help="VGG-16 channel multiplier (1: the original).")
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Steps per epoch (default: one pass over the training crops).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per step (--monuseg-fraction of them MoNuSeg sub-images).")
@click.option("--monuseg-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.25, show_default=True, help="Share of each batch drawn from the mitosis-free MoNuSeg sub-images (negatives).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True, help="SGD learning rate (momentum 0.9, weight decay 5e-4).")
@click.option("--box-um", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True, help="Side of the box drawn around each mitosis centroid (microns).")
@click.option("--stain-normalize", "stain_norm", type=click.Choice(["macenko", "none"]), default="macenko", show_default=True)
@click.option("--eval/--no-eval", "do_eval", default=True, show_default=True, help="Select the epoch and threshold on the validation patients and report the test patients (--no-eval: keep the last epoch, threshold 0.5).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=str), default=None, help="Write the best model as a bundle here (fp16 weights + model card).")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-rcnn", show_default=True)
@seed
@quiet
def train_rcnn_cmd(data, variant, width, epochs, iterations, batch_size, monuseg_fraction, lr, box_um, stain_norm, do_eval, device, export_path, out, seed, quiet):
    """Train MITOS-RCNN on DATA (the shared data folder: mitosis/amibr_128 + monuseg).

    Boxes of --box-um around the AMi-Br mitoses (random 96 px windows, rotations, Macenko),
    MoNuSeg fields split into 16 sub-images as negatives; the dense detector's patient split
    (same --seed). Writes OUT/best.pt (best validation F1 within 8 um), OUT/test_metrics.json.
    """
    from ..datasets.mitosis import mitosis_samples
    from ..train.rcnn import RcnnTrainConfig, select_threshold, train_rcnn

    try:
        cfg = RcnnTrainConfig(variant=variant, width=width, epochs=epochs, iterations=iterations, batch_size=batch_size, monuseg_fraction=monuseg_fraction, lr=lr, box_um=box_um, stain=None if stain_norm == "none" else stain_norm, seed=seed, device=device)
        d = mitosis_samples(data, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    res = train_rcnn(d, cfg, out, verbose=not quiet, validate=do_eval)
    model = res["model"]
    detection: dict[str, Any] = {"detection_threshold": 0.5}
    if do_eval:
        from ..mitosis.rcnn import evaluate_rcnn_detection

        delta = select_threshold(res["val"])
        test = evaluate_rcnn_detection(model, d, split="test", device=device, verbose=not quiet)
        curve = test["curve"]
        row = curve.iloc[int(abs(curve["threshold"] - delta).to_numpy().argmin())].to_dict()
        curve.to_csv(Path(out) / "test_f1_curve.csv", index=False)
        detection = {
            "detection_threshold": delta,
            "val_best_f1": float(res["val"]["best"]["f1"]),
            "test_at_threshold": row,
            "test_best": test["best"],
            "test_crops": test["n_amibr"],
            "test_fields": test["n_monuseg"],
            "test_monuseg_area_mm2": test["monuseg_area_mm2"],
        }
        split = {s: len(set(d.samples.loc[d.samples["split"] == s, "group"])) for s in ("train", "val", "test")}
        (Path(out) / "test_metrics.json").write_text(json.dumps({"detection": detection, "best_epoch": res["best_epoch"], "split_patients": split, "train_config": cfg.__dict__}, indent=2, default=str))
        click.echo(
            f"{variant}: best epoch {res['best_epoch']}; threshold {delta:.2f} (validation F1 {detection['val_best_f1']:.3f}); "
            f"test F1 within 8 um {row['f1']:.3f} (precision {row['precision']:.3f}, recall {row['recall']:.3f}; TP {int(row['tp'])}, FP {int(row['fp'])}, FN {int(row['fn'])})"
        )
    else:
        click.echo(f"{variant}: {epochs} epoch(s), no evaluation; wrote {res['best_path']}")
    if export_path:
        from ..models.pretrained import export_bundle

        command = " ".join(["histoscope", *sys.argv[1:]])
        n_params = sum(p.numel() for p in model.parameters())
        per_epoch = "" if iterations else f"; one pass over the {res['positives']:,} training crops per epoch"
        kept = f"best epoch {res['best_epoch']} by validation F1" if do_eval else "the last epoch (no validation)"
        lines = [
            "## Data",
            f"- `{data}`: MITOS-BOXES = {box_um:g} um boxes around the AMi-Br mitoses (128 px crops, MIDOG21 + TUPAC16, ~0.25 um/px), random"
            f" {cfg.window} px windows (the mitosis within +-16 px of the centre, the rest same-source background) rotated by 0/90/180/270;"
            " MoNuSeg 40x tumour fields split into 16 sub-images as negatives; Macenko normalisation of every crop / sub-image.",
            "- Licences (see ../shared/data/MANIFEST.md): AMi-Br has no licence file, upstream MIDOG 2021 (reportedly CC BY-NC-ND 4.0)"
            " and TUPAC16 challenge terms; MoNuSeg CC BY-NC-SA 4.0. Research and non-commercial use only.",
            "- Split by patient: the dense mitosis detector's (same seed); test patients never trained on nor used for selection.",
            "",
            "## Training",
            f"- Command: `{command}`",
            f"- Seed {seed}; variant {variant}, VGG-16 width {width}, {n_params:,} parameters; SGD lr {lr}, momentum 0.9, weight decay 5e-4,"
            f" {epochs} epochs of {res['steps_per_epoch']} steps x {batch_size} images ({round(batch_size * monuseg_fraction)} of them MoNuSeg sub-images, drawn at random from"
            f" {res['negatives']}{per_epoch}; {cfg.warmup}-step warm-up, lr x 0.1 for the last quarter of the epochs); eq. 2 with lambda 10; {kept}.",
        ]
        if do_eval:
            r = detection["test_at_threshold"]
            lines += [
                "",
                "## Detection on the held-out test patients (one-to-one matching within 8 um, as `evaluate_detection`)",
                "",
                f"Threshold {detection['detection_threshold']:.2f} chosen on the validation patients (F1 {detection['val_best_f1']:.3f});"
                f" {detection['test_crops']} AMi-Br test crops, {detection['test_fields']} MoNuSeg test fields (every detection there a false positive).",
                "",
                "| precision | recall | F1 | TP | FP | FN | false detections / mm^2 (MoNuSeg) |",
                "|---|---|---|---|---|---|---|",
                f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {int(r['tp'])} | {int(r['fp'])} | {int(r['fn'])} | {r['fp_per_mm2_monuseg']:.1f} |",
            ]
        card = {
            "command": command, "seed": seed, "variant": variant, "detection": detection, "detection_threshold": detection["detection_threshold"],
            "body": "\n".join(lines), "used_by": "used by `histoscope detect mitosis --detector rcnn`",
        }  # fmt: skip
        click.echo(f"exported {export_bundle(model, export_path, card=card)}")
