"""``histoscope stain normalize|augment|figure``: stain work on images and on slide tiles."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import click
import numpy as np

from .options import apply_options, quiet, seed, slide_mpp

#: Inputs whose level 0 is at most this many pixels on a side and that have a
#: single level are treated as images; anything larger is a slide and is tiled.
MAX_IMAGE_SIDE = 8192
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def _expand(inputs: tuple[str, ...]) -> list[Path]:
    """Files as given; folders contribute their image files (sorted, not recursive)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise click.UsageError(f"{p}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def _image_pixels(path: Path | str, slide_mpp: float | None = None) -> np.ndarray | None:
    """An image file's pixels (HxWx3 uint8), or None when the file is a whole-slide image.

    Opens the file once; errors name the file.
    """
    from ..slide import open_slide

    with open_slide(path, mpp=slide_mpp) as slide:
        if slide.level_count > 1 or max(slide.dimensions) > MAX_IMAGE_SIDE:
            return None
        return slide.read_region((0, 0), slide.dimensions, level=0)


def _read_image(path: Path | str) -> np.ndarray:
    """An image file as HxWx3 uint8; a whole-slide image here is a usage error."""
    pixels = _image_pixels(path)
    if pixels is None:
        raise click.UsageError(f"{path}: is a whole-slide image; give a patch image here")
    return pixels


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.partial")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def _slide_tiles(path: Path, *, size: int, mpp: float | None, min_tissue: float, max_tiles: int | None, slide_mpp: float | None, seed: int):
    """Open a slide and choose its tissue tiles (grid, or a random sample of ``max_tiles``)."""
    from ..slide import open_slide, tissue_mask
    from ..tiles import TileSpec, sample_tiles, tile_grid

    slide = open_slide(path, mpp=slide_mpp)
    if mpp is not None and slide.mpp is None:
        slide.require_mpp()
    spec = TileSpec(size=size, mpp=mpp, downsample=None if mpp is not None else 1.0)
    mask = tissue_mask(slide)
    if max_tiles:
        table = sample_tiles(slide, max_tiles, spec, rng=seed, tissue=mask, min_tissue=min_tissue)
    else:
        table = tile_grid(slide, spec, tissue=mask, min_tissue=min_tissue)
    return slide, table


slide_tile_options = [
    click.option("--size", type=click.IntRange(min=8), default=256, show_default=True, help="Slides: tile side in pixels."),
    click.option("--mpp", type=float, default=0.5, show_default=True, help="Slides: tile resolution (um/px)."),
    click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Slides: minimum tissue fraction of a tile."),
    click.option("--max-tiles", type=click.IntRange(min=1), default=None, help="Slides: a random sample of at most N tissue tiles instead of all."),
]


@click.group()
def stain() -> None:
    """Stain normalisation and augmentation of images and slide tiles."""


@stain.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--target", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str), help="Target image whose stain appearance the inputs take on.")
@click.option("--method", type=click.Choice(["macenko", "reinhard"]), default="macenko", show_default=True)
@click.option("--backend", type=click.Choice(["numpy", "torch"]), default="numpy", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch backend: cpu, cuda or auto.")
@click.option("--keep-glass/--map-glass", default=True, show_default=True, help="Leave white background as it is (Macenko).")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-stain", show_default=True)
@apply_options(slide_tile_options)
@slide_mpp
@seed
@quiet
def normalize(inputs, target, method, backend, device, keep_glass, out, size, mpp, min_tissue, max_tiles, slide_mpp, seed, quiet):
    """Normalise INPUTS (images, folders of images, or slides) to the stain of --target.

    Images are written as OUT/<name>.png; slides are tiled (tissue tiles at --size and
    --mpp) and their normalised tiles written as OUT/<slide>/<slide>_x<X>_y<Y>.png with
    a tile table OUT/<slide>-tiles.csv.  Tiles where too little tissue remains to
    estimate stains keep the reference (reported as a warning count).
    """
    from tqdm.auto import tqdm

    from ..exceptions import StainWarning
    from ..stain import get_normalizer
    from ..tiles import save_tile_table, write_tiles
    from ..utils.convert import image_to_tensor, tensor_to_image

    kwargs: dict[str, Any] = {"backend": backend, "device": device}
    if method == "macenko":
        kwargs["preserve_white"] = keep_glass
    norm = get_normalizer(method, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StainWarning)
        try:
            norm.fit(_read_image(target))
        except StainWarning as exc:
            raise click.UsageError(f"{target}: unusable as a stain target: {exc}") from None
        except ValueError as exc:
            raise click.UsageError(f"{target}: unusable as a stain target: {exc}") from None

    def one(tile: np.ndarray) -> np.ndarray:
        if backend == "torch":
            return tensor_to_image(norm.transform(image_to_tensor(tile)))
        return norm.transform(tile)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fallbacks = 0
    written = 0
    files = _expand(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StainWarning)
        for path in tqdm(files, desc="normalise", unit="file", disable=quiet or len(files) < 2):
            pixels = _image_pixels(path, slide_mpp)
            if pixels is not None:
                _save_png(one(pixels), out_dir / f"{path.stem}.png")
                written += 1
                continue
            slide, table = _slide_tiles(path, size=size, mpp=mpp, min_tissue=min_tissue, max_tiles=max_tiles, slide_mpp=slide_mpp, seed=seed)
            with slide:
                write_tiles(slide, table, out_dir / slide.name, fmt="png", verbose=not quiet, transform=one)
                save_tile_table(table, out_dir / f"{slide.name}-tiles.csv")
            written += len(table)
        fallbacks = sum(1 for w in caught if issubclass(w.category, StainWarning))
    click.echo(f"normalised {written} image(s)/tile(s) with {method} into {out_dir}")
    if fallbacks:
        click.echo(f"{fallbacks} of them had too little tissue to estimate stains and kept the reference", err=True)


@stain.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--letters", default="C", show_default=True, help="Augmentations by Tellez et al.'s letters: R S E C H B G (e.g. RCSEHBG).")
@click.option("--copies", type=click.IntRange(min=1), default=4, show_default=True, help="Augmented copies per image or tile.")
@click.option("--crop", type=click.IntRange(min=1), default=None, help="Random crop size (e.g. 100 from 128).")
@click.option("--sigma", type=click.FloatRange(min=0), default=0.05, show_default=True, help="HED stain augmentation strength (C).")
@click.option("--preserve-white", is_flag=True, help="C keeps white background white.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="histoscope-augment", show_default=True)
@apply_options(slide_tile_options)
@slide_mpp
@seed
@quiet
def augment(inputs, letters, copies, crop, sigma, preserve_white, out, size, mpp, min_tissue, max_tiles, slide_mpp, seed, quiet):
    """Write --copies augmented versions of each INPUT (images, folders, or slide tiles).

    Outputs are OUT/<name>_aug<k>.png plus OUT/params.jsonl, one line per output
    with the letters, seed and every drawn parameter (enough to replay it).
    """
    from tqdm.auto import tqdm

    from ..stain.transforms import AugmentConfig, Augmentation, params_to_json, parse_letters
    from ..tiles import iter_tiles
    from ..utils.convert import image_to_tensor, tensor_to_image

    try:
        letters = parse_letters(letters)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--letters") from None
    aug = Augmentation(letters, crop=crop, config=AugmentConfig(hed_sigma=sigma, preserve_white=preserve_white), seed=seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def sources() -> Iterator[tuple[str, np.ndarray]]:
        for path in _expand(inputs):
            pixels = _image_pixels(path, slide_mpp)
            if pixels is not None:
                yield path.stem, pixels
                continue
            slide, table = _slide_tiles(path, size=size, mpp=mpp, min_tissue=min_tissue, max_tiles=max_tiles or 16, slide_mpp=slide_mpp, seed=seed)
            with slide:
                for (x, y), tile in zip(table[["x", "y"]].itertuples(index=False), iter_tiles(slide, table)):
                    yield f"{slide.name}_x{x}_y{y}", tile

    params_path = out_dir / "params.jsonl"
    tmp = params_path.with_name(".params.jsonl.partial")
    n = 0
    with open(tmp, "w", encoding="utf-8") as log:
        for name, image in tqdm(sources(), desc="augment", unit="image", disable=quiet):
            x = image_to_tensor(np.ascontiguousarray(image))[None].expand(copies, -1, -1, -1)
            y, params = aug(x, return_params=True)
            for k, im in enumerate(tensor_to_image(y)):
                fname = f"{name}_aug{k}.png"
                _save_png(im, out_dir / fname)
                record = {"file": fname, "source": name, "letters": letters, "crop": crop, "sigma": sigma, "preserve_white": preserve_white, "seed": seed, "params": params_to_json(params, k)}
                log.write(json.dumps(record) + "\n")
                n += 1
    os.replace(tmp, params_path)
    click.echo(f"wrote {n} augmented image(s) and {params_path.name} into {out_dir}")


@stain.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--letters", default="RSECHBG", show_default=True, help="One column per letter, then all together.")
@click.option("--rows", type=click.IntRange(min=1, max=10), default=3, show_default=True, help="Random draws (rows).")
@click.option("--crop", type=click.IntRange(min=1), default=None, help="Random crop in the last column (e.g. 100).")
@click.option("--patch", type=click.IntRange(min=16), default=128, show_default=True, help="Centre crop of IMAGE used as the patch.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default="augmentations.png", show_default=True)
@seed
def figure(image, letters, rows, crop, patch, out, seed):
    """A figure like Fig. 5 of Tellez et al.: one patch, one column per augmentation."""
    from ..report.figures import augmentation_figure

    pixels = _read_image(image)
    h, w = pixels.shape[:2]
    s = min(patch, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    path = augmentation_figure(pixels[top : top + s, left : left + s], out, letters=letters, rows=rows, crop=crop, seed=seed)
    click.echo(f"wrote {path}")
