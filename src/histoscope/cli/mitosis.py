"""``histoscope train mitosis`` (and the mitosis parts of ``detect``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from .options import quiet, seed


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def card_body(*, data: str, command: str, seed: int, config: dict[str, Any], split: dict[str, Any], metrics: dict[str, Any], baselines: dict[str, float] | None, detection: dict[str, Any] | None = None) -> str:
    """The model card's Markdown body for a mitosis detector (data, licence, command, test metrics)."""
    a, s, c = metrics["all"], metrics["same_source"], metrics["cross_source"]
    lines = [
        "## Data",
        f"- `{data}`: positives = AMi-Br 128 px crops centred on mitotic figures (MIDOG21 + TUPAC16, ~0.25 um/px);"
        " negatives = off-centre windows of the same crops (>= 8 um from the mitosis: same source) and MoNuSeg 40x"
        " tumour fields (annotated nuclei and random positions: hard, cross-source).",
        "- Licences (see ../shared/data/MANIFEST.md): AMi-Br has no licence file, upstream MIDOG 2021 (reportedly CC BY-NC-ND 4.0)"
        " and TUPAC16 challenge terms; MoNuSeg CC BY-NC-SA 4.0. Research and non-commercial use only.",
        f"- Split by patient: {split}.",
        "",
        "## Training",
        f"- Command: `{command}`",
        f"- Seed {seed}; {config}.",
        "",
        "## Metrics on the held-out test patients (patch level, threshold 0.5)",
        "",
        "| test set | precision | recall | F1 | AUROC |",
        "|---|---|---|---|---|",
        f"| all test patches ({metrics['n']}) | {_fmt(a['precision'])} | {_fmt(a['recall'])} | {_fmt(a['f1'])} | {_fmt(a['auroc'])} |",
        f"| same source: mitosis vs corners of the same crops | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | {_fmt(s['auroc'])} |",
        f"| cross source: mitosis vs MoNuSeg nuclei / random | {_fmt(c['precision'])} | {_fmt(c['recall'])} | {_fmt(c['f1'])} | {_fmt(c['auroc'])} |",
        "",
        "Mean mitosis score per kind of test patch: " + ", ".join(f"{k} {v['mean']:.3f} (n={v['n']})" for k, v in metrics["scores"].items()) + ".",
    ]
    if detection:
        a, b = detection["test_at_delta"], detection["test_at_0.8"]
        lines += [
            "",
            f"## Detection on the held-out test patients (dense inference, one-to-one matching within 8 um)",
            "",
            f"Detection threshold delta = {detection['detection_threshold']:.2f}, chosen on the validation patients (best F1 {detection['val_best_f1']:.3f});"
            f" {detection['test_crops']} AMi-Br test crops (one mitosis each), {detection['test_fields']} MoNuSeg test fields ({detection['test_monuseg_area_mm2']:.3f} mm^2, no annotated mitosis).",
            "",
            "| threshold | precision | recall | F1 | false detections / mm^2 (MoNuSeg) |",
            "|---|---|---|---|---|",
            f"| delta = {detection['detection_threshold']:.2f} | {_fmt(a['precision'])} | {_fmt(a['recall'])} | {_fmt(a['f1'])} | {a['fp_per_mm2_monuseg']:.1f} |",
            f"| 0.80 (the paper's map threshold, no further filter) | {_fmt(b['precision'])} | {_fmt(b['recall'])} | {_fmt(b['f1'])} | {b['fp_per_mm2_monuseg']:.1f} |",
        ]
    if baselines:
        lines += [
            "",
            f"Colour-only baselines on the same test patients: dark-centre heuristic same-source AUROC {baselines['dark_centre_auroc']:.3f};"
            f" colour-statistics logistic regression, mitosis vs MoNuSeg, AUROC {baselines['colour_source_auroc']:.3f}.",
        ]
    return "\n".join(lines)


@click.command("mitosis")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--patch", type=click.IntRange(min=32), default=64, show_default=True, help="Patch side in px at 0.25 um/px (64: the 64 px variant; 100 needs larger crops than AMi-Br's for same-source negatives).")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Width factor gamma of the ensemble members.")
@click.option("--augment", default="RCSEHBG", show_default=True, help="Augmentation letters (their ablation: RSEB, RCSEB, RCSEHBG); '' for none.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Passes over the (jittered) training positives.")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True, help="Balanced: half positives.")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True, help="Bagging members k.")
@click.option("--distill-width", type=click.FloatRange(min=0, min_open=True), default=None, help="Train a student of this width on the ensemble's probabilities.")
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True, help="Easy model first, then negatives resampled by its probabilities.")
@click.option("--strides", default=None, help="Strides of the eight 3x3 layers, comma-separated (Table II: 1,2,1,2,1,1,1,1; the one-pixel paper's stride-2 variant: 2,2,1,1,1,1,1,1).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True, help="DataLoader worker processes.")
@click.option("--resume", is_flag=True, help="Continue (networks already trained in OUT are reused).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=str), default=None, help="Write the final model (student, else the single CNN) as a bundle here, with its model card.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-mitosis", show_default=True)
@seed
@quiet
def train_mitosis_cmd(data, patch, width, augment, epochs, batch_size, ensemble, distill_width, hard_negatives, strides, device, workers, resume, export_path, out, seed, quiet):
    """Train the mitosis detector on DATA (the shared data folder: mitosis/amibr_128 + monuseg).

    The whole-slide mitosis paper's recipe: an easy model, hard negatives, a bagging
    ensemble of --ensemble networks and a student of --distill-width. Evaluates on the
    held-out test patients (OUT/test_metrics.json) with the source-shortcut checks.
    """
    from ..datasets.mitosis import mitosis_samples
    from ..train.mitosis import MitosisTrainConfig, colour_baselines, count_parameters, evaluate_patches, train_mitosis

    try:
        stride_values = None if strides is None else tuple(int(v) for v in strides.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {strides!r}", param_hint="--strides") from None
    try:
        d = mitosis_samples(data, patch=patch, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    cfg = MitosisTrainConfig(width=width, augment=augment, epochs=epochs, batch_size=batch_size, ensemble=ensemble, distill_width=distill_width, hard_negatives=hard_negatives, strides=stride_values, seed=seed, device=device, num_workers=workers)
    res = train_mitosis(d, cfg, out_dir=out, resume=resume, verbose=not quiet)
    final = res["student"] if res["student"] is not None else res["ensemble"]
    metrics = evaluate_patches(final, d, device=device, verbose=not quiet)
    metrics.pop("probs")
    baselines = colour_baselines(d, seed=seed)
    # the paper's detection threshold delta: chosen on the validation patients, reported on the test ones
    from ..mitosis.detect import evaluate_detection

    # (components of the map above 0.8, as detect_mitoses forms them; delta >= 0.8 filters them further)
    val_det = evaluate_detection(final, d, split="val", map_threshold=0.8, device=device, verbose=not quiet)
    delta = float(val_det["best"]["threshold"])
    test_det = evaluate_detection(final, d, split="test", map_threshold=0.8, thresholds=np.unique([0.8, delta]), device=device, verbose=not quiet)
    curve = test_det["curve"]

    def row(t: float) -> dict[str, Any]:  # the curve's row at threshold t
        return curve.iloc[int(np.argmin(np.abs(curve["threshold"].to_numpy() - t)))].to_dict()

    detection = {
        "detection_threshold": delta,
        "val_best_f1": float(val_det["best"]["f1"]),
        "test_at_delta": row(delta),
        "test_at_0.8": row(0.8),
        "test_monuseg_area_mm2": test_det["monuseg_area_mm2"],
        "test_crops": test_det["n_amibr"],
        "test_fields": test_det["n_monuseg"],
    }
    test_det["curve"].to_csv(Path(out) / "test_f1_curve.csv", index=False)
    split = {s: sorted(set(d.samples.loc[d.samples["split"] == s, "group"])) for s in ("train", "val", "test")}
    summary = {"metrics": metrics, "baselines": baselines, "detection": detection, "parameters": count_parameters(final), "split_sizes": {k: len(v) for k, v in split.items()}}
    (Path(out) / "test_metrics.json").write_text(json.dumps({**summary, "split": split}, indent=2, default=str))
    m = metrics
    click.echo(
        f"test F1 {m['all']['f1']:.3f} (precision {m['all']['precision']:.3f}, recall {m['all']['recall']:.3f}, AUROC {m['all']['auroc']:.3f}); "
        f"same-source AUROC {m['same_source']['auroc']:.3f} vs dark-centre {baselines['dark_centre_auroc']:.3f}; "
        f"detection F1 within 8 um {detection['test_at_delta']['f1']:.3f} at delta {delta:.2f} (chosen on validation), "
        f"{detection['test_at_delta']['fp_per_mm2_monuseg']:.0f} false detections / mm^2 on MoNuSeg"
    )
    if export_path:
        from ..models.pretrained import export_bundle

        if not hasattr(final, "config") or final.__class__.__name__ == "Ensemble":
            raise click.UsageError("--export needs a single network: use --ensemble 1 or --distill-width")
        command = " ".join(["histoscope", *[a for a in sys.argv[1:] if a != "--resume"]])  # resuming is exact
        body = card_body(data=data, command=command, seed=seed, config={**cfg.__dict__, "parameters": count_parameters(final)}, split={k: f"{len(v)} patients" for k, v in split.items()}, metrics=metrics, baselines=baselines, detection=detection)
        used_by = (
            "used by `histoscope detect mitosis` and `histoscope analyze` for mitosis detection, and the default target of `histoscope audit one-pixel`"
            if stride_values is None
            else f"the variant with strides {','.join(map(str, stride_values))} audited beside the bundled mitosis_detector by `histoscope audit one-pixel` (usable wherever a mitosis model is taken)"
        )
        card = {"command": command, "seed": seed, "test_metrics": metrics, "baselines": baselines, "detection": detection, "detection_threshold": delta, "body": body, "used_by": used_by}
        path = export_bundle(final, export_path, card=card)
        click.echo(f"exported {path}")


@click.group()
def detect() -> None:
    """Detect objects over slides and images."""


@detect.command("mitosis")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--model", default=None, help="Bundled model name or checkpoint (default: the bundled mitosis_detector).")
@click.option("--slide-mpp", type=float, default=None, help="Level-0 microns per pixel for inputs that do not record it (0.25 for 40x).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.8, show_default=True, help="Probability-map threshold before connected components.")
@click.option("--detection-threshold", type=click.FloatRange(0, 1), default=None, help="Keep detections whose peak probability reaches this (the paper's delta).")
@click.option("--min-distance-um", type=click.FloatRange(min=0), default=25.0, show_default=True, help="Detections closer than this are merged.")
@click.option("--hpf-area-mm2", type=click.FloatRange(min=0, min_open=True), default=None, help="Area of one high-power field (default 0.196 mm^2).")
@click.option("--no-mask", is_flag=True, help="Run over the whole image, not only over detected tissue.")
@click.option("--mode", type=click.Choice(["dense", "candidates"]), default="dense", show_default=True, help="dense: the paper's fully convolutional map (prob-map.zarr); candidates: the CNN only at H&E candidates (much faster on a CPU).")
@click.option("--detector", type=click.Choice(["dense", "rcnn"]), default="dense", show_default=True, help="dense: the distilled CNN (mitosis_detector); rcnn: MITOS-RCNN boxes on 16 sub-images per 1000 px field (mitosis_rcnn; --threshold and --mode apply to dense only).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-mitosis-detect", show_default=True)
@quiet
def detect_mitosis_cmd(inputs, model, slide_mpp, threshold, detection_threshold, min_distance_um, hpf_area_mm2, no_mask, mode, detector, device, out, quiet):
    """Detect mitoses in slides or images; hotspot, grade and mitotic count per 10 HPF.

    Writes OUT/<name>/: detections.csv, detections.geojson (QuPath), summary.json,
    detections.png (thumbnail with detections and the hotspot circle) and, in dense mode,
    prob-map.zarr.
    """
    import os
    import shutil

    from PIL import Image

    from ..exceptions import HistoscopeError
    from ..mitosis.detect import detect_mitoses, resolve_mitosis_model
    from ..mitosis.hotspot import HPF_AREA_MM2
    from ..report import draw_detections, points_feature_collection, write_geojson
    from ..slide import open_slide

    try:
        if detector == "rcnn":
            from ..mitosis.rcnn import DEFAULT_RCNN_MODEL
            from ..models.pretrained import resolve_model
            from ..models.rcnn import MitosRCNN

            net = resolve_model(DEFAULT_RCNN_MODEL if model is None else model, device=device)
            if not isinstance(net, MitosRCNN):
                raise ValueError(f"{model}: a {type(net).__name__}, not a MITOS-RCNN model (use --detector dense for it)")
        else:
            net = resolve_mitosis_model(model, device=device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in inputs:
        try:
            with open_slide(path, mpp=slide_mpp) as s:
                if s.mpp is None:
                    raise click.UsageError(f"{path}: the file does not record its resolution; pass --slide-mpp (0.25 for 40x scans)")
                final = root / s.name
                work = root / f".{s.name}.partial"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                try:
                    if detector == "rcnn":
                        from ..mitosis.rcnn import detect_mitoses_rcnn

                        res = detect_mitoses_rcnn(
                            s, net, detection_threshold=detection_threshold, min_distance_um=min_distance_um, mask=None if no_mask else "auto",
                            hpf_area_mm2=hpf_area_mm2 or HPF_AREA_MM2, device=device, verbose=not quiet,
                        )  # fmt: skip
                    else:
                        res = detect_mitoses(
                            s, net, threshold=threshold, detection_threshold=detection_threshold, min_distance_um=min_distance_um,
                            mask=None if no_mask else "auto", out=work / "prob-map.zarr" if mode == "dense" else None,
                            hpf_area_mm2=hpf_area_mm2 or HPF_AREA_MM2, mode=mode, device=device, verbose=not quiet,
                        )  # fmt: skip
                    res.detections.to_csv(work / "detections.csv", index=False)
                    write_geojson(points_feature_collection(res.detections, name="Mitosis"), work / "detections.geojson")
                    thumb = s.thumbnail(1024)
                    h = res.hotspot
                    img = draw_detections(thumb, res.detections, slide_dimensions=s.dimensions, hotspot_xy=None if h is None else h.centre_xy, hotspot_radius_px=None if h is None else h.radius_px, ring_level0_px=8.0 / s.mpp[0])
                    Image.fromarray(img).save(work / "detections.png")
                    summary = {"input": str(path), "model": getattr(net, "card", {}).get("name", str(model)), **res.summary()}
                    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(work, final)
                except BaseException:
                    shutil.rmtree(work, ignore_errors=True)
                    raise
        except HistoscopeError as exc:
            click.echo(f"histoscope: error: {exc}", err=True)
            failed += 1
            continue
        grade = "n/a" if summary["grade"] is None else summary["grade"]
        click.echo(
            f"{path}: {summary['detections']} mitoses; hotspot count {summary['hotspot_count']}, grade {grade}; "
            f"{summary['mitoses_per_10hpf']} per 10 HPF ({summary['mitotic_category']}) -> {final}"
        )
    if failed:
        sys.exit(2)


@click.command("atypical")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--arch", default="small_cnn", show_default=True)
@click.option("--patch", type=click.IntRange(min=32), default=64, show_default=True, help="Patch side in px at 0.25 um/px, centred on the mitosis.")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--augment", default="RCSEHBG", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=str), default=None, help="Write the model as a bundle here, with its model card.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-atypical", show_default=True)
@seed
@quiet
def train_atypical_cmd(data, arch, patch, epochs, augment, device, workers, export_path, out, seed, quiet):
    """Train the atypical-versus-normal mitosis classifier on DATA (AMi-Br expert labels).

    Uses the mitosis detector's patient split (same --seed): test patients are never seen.
    """
    from ..datasets.mitosis import mitosis_samples
    from ..train import TrainConfig
    from ..train.mitosis import train_atypical

    try:
        d = mitosis_samples(data, patch=patch, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    cfg = TrainConfig(epochs=epochs, batch_size=32, select="val_loss", seed=seed, device=device, num_workers=workers)
    res = train_atypical(d, out_dir=out, arch=arch, augment=augment, config=cfg, verbose=not quiet)
    rep = res["report"]
    click.echo(str(rep))
    if export_path:
        from ..models.pretrained import export_bundle

        pc = rep.per_class
        body = "\n".join(
            [
                "## Data",
                f"- `{data}` mitosis/amibr_128: AMi-Br mitotic figures with the 3-expert majority label atypical / normal"
                " (MIDOG21 + TUPAC16). Licence: see ../shared/data/MANIFEST.md (research, non-commercial).",
                "- Split by patient, identical to the mitosis detector's (same seed).",
                "",
                "## Training",
                f"- Command: `{' '.join(['histoscope', *sys.argv[1:]])}`",
                f"- Seed {seed}; {epochs} epochs, balanced batches of 32, Adam 1e-3 step schedule, augmentation {augment}.",
                "",
                f"## Metrics on the held-out test patients ({res['n_test']} mitoses)",
                f"- accuracy {rep.accuracy:.3f}, balanced accuracy {rep.balanced_accuracy:.3f}, AUROC {rep.auroc_macro:.3f}, kappa {rep.kappa:.3f}",
                "",
                "```",
                pc.to_string(float_format=lambda v: f"{v:.3f}"),
                "```",
            ]
        )
        card = {"command": " ".join(["histoscope", *sys.argv[1:]]), "seed": seed, "test_metrics": rep.to_dict(), "body": body, "used_by": "used by `histoscope analyze` to label detected mitoses atypical or normal"}
        click.echo(f"exported {export_bundle(res['model'], export_path, card=card)}")

