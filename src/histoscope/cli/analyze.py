"""``histoscope analyze [SLIDE...]``: the end-to-end slide report (no argument: the bundled demo)."""

from __future__ import annotations

import click

from .options import quiet, report_failures, scheduler, seed, slide_mpp, workers


@click.command()
@click.argument("slides", nargs=-1, type=click.Path(path_type=str))
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-out", show_default=True, help="Report folder (one sub-folder per slide).")
@click.option("--tile-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Tile resolution in microns per pixel.")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--tissue-model", default="colorectal_grader", show_default=True, help="Bundled tissue classifier drawn as a class map; 'none' to skip.")
@click.option("--mitosis-model", default="mitosis_detector", show_default=True, help="Bundled mitosis detector (detections, hotspot, grade): mitosis_detector (dense CNN) or mitosis_rcnn (MITOS-RCNN); 'none' to skip.")
@click.option("--mitosis-mode", type=click.Choice(["candidates", "dense"]), default="candidates", show_default=True, help="How the dense CNN runs. candidates: at H&E candidates (fast on a CPU); dense: the paper's fully convolutional map. Ignored by mitosis_rcnn.")
@click.option("--nic-encoder", default=None, help="Also compress each slide with this NIC encoder (bundled name or file); the report shows the embedding grid.")
@click.option("--slide-model", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None, help="A slide model from `histoscope nic train` applied to the compressed slide (prediction + Grad-CAM); needs --nic-encoder.")
@click.option("--force", is_flag=True, help="Analyse again slides whose report folder is already complete for these options.")
@slide_mpp
@workers
@scheduler
@quiet
@seed
def analyze(slides, out, tile_size, mpp, overlap, min_tissue, tissue_model, mitosis_model, mitosis_mode, nic_encoder, slide_model, force, slide_mpp, workers, scheduler, quiet, seed) -> None:
    """Analyse slides end to end and write a report folder per slide.

    With no SLIDE, analyses the bundled demo slide (a synthetic H&E slide generated on
    first use) so the whole pipeline can be seen on a fresh machine. Several slides run as
    Dask jobs; a rerun skips slides whose report folder is complete (``--force`` redoes
    them), and ``<out>/cohort.csv`` and ``cohort.html`` tabulate the results.
    """
    from ..analyze import AnalysisConfig, analyze_slides

    from ..models.pretrained import list_pretrained

    tissue_model = None if tissue_model.lower() in ("none", "") else tissue_model
    if tissue_model and tissue_model not in list_pretrained():
        raise click.BadParameter(f"no bundled model {tissue_model!r}; bundled: {list_pretrained()} (or 'none')", param_hint="--tissue-model")
    mitosis_model = None if mitosis_model.lower() in ("none", "") else mitosis_model
    if slide_model and not nic_encoder:
        raise click.UsageError("--slide-model works on compressed slides: give --nic-encoder too")
    config = AnalysisConfig(tile_size=tile_size, mpp=mpp, overlap=overlap, min_tissue=min_tissue, slide_mpp=slide_mpp, seed=seed, tissue_model=tissue_model, mitosis_model=mitosis_model, mitosis_mode=mitosis_mode, nic_encoder=nic_encoder, slide_model=slide_model)
    if nic_encoder:
        from ..models.nic import load_encoder

        load_encoder(nic_encoder)  # a bad name or file fails now, before any slide
    sources = list(slides)
    if not sources:
        from ..datasets import demo_slide

        if not quiet:
            click.echo("No slide given: analysing the bundled demo slide (synthetic H&E).")
        sources = [demo_slide(verbose=not quiet).path]
    results = analyze_slides(sources, out, config=config, workers=workers, scheduler=scheduler, verbose=not quiet, force=force)
    for r in results:
        if r.ok:
            v = r.value
            mit = v.get("mitosis")
            extra = "" if not mit else f", {mit['detections']} mitoses (grade {mit['grade']})"
            done = " (already complete: skipped)" if v.get("skipped") else ""
            click.echo(f"{r.item}: {v['tissue_tiles']} tissue tiles, {v['tissue_fraction']:.1%} tissue{extra} -> {v['report']}{done}")
    click.echo(f"cohort table: {out}/cohort.csv, {out}/cohort.html")
    raise SystemExit(report_failures(results))
