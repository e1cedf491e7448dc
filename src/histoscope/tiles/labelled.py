"""Labelled images and the patches cut from them (the colorectal paper's Fig. 4 algorithm).

Three ways to describe labelled data, all ending in one :class:`LabelledImages` list:

* a folder per class (``root/<class>/*.png``) — :func:`read_class_folders`;
* a table (CSV) with an image column and a label column, optionally a patient (group)
  column and an annotation-mask column — :func:`read_label_table`;
* and then patches from annotated images — :func:`annotated_patches`: sliding-window
  patches with an overlap fraction (0.3 in the paper) plus randomly placed ones, keeping
  only patches that are at least ``min_annotation`` annotated (the gland masks). The patches
  come from the foundation's one grid function (:func:`~histoscope.tiles.tile_grid` /
  :func:`~histoscope.tiles.sample_tiles`) and its coverage filter; nothing here tiles by hand.

:class:`PatchDataset` serves the patches to PyTorch (``(3, H, W)`` float, label), with an
optional augmentation (e.g. :class:`histoscope.stain.Augmentation`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..slide.mask import Mask
from ..slide.reader import open_slide
from ..utils.convert import image_to_tensor
from .grid import TileSpec, sample_tiles, tile_grid

__all__ = [
    "LabelledImages",
    "read_class_folders",
    "read_label_table",
    "annotated_patches",
    "whole_image_patches",
    "PatchDataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class LabelledImages:
    """Images with class labels, patient groups and optional annotation masks.

    Attributes
    ----------
    table : pandas.DataFrame
        Columns ``image`` (path), ``label`` (int), ``group`` (patient id, str),
        ``annotation`` (path or None), ``name`` (str).
    classes : list of str
        Class names; ``label`` indexes this list (the class list is configuration).
    mpp : float or None
        Microns per pixel of the images (None: unknown).
    """

    table: pd.DataFrame
    classes: list[str]
    mpp: float | None = None

    def __post_init__(self) -> None:
        need = {"image", "label", "group", "annotation", "name"}
        missing = need - set(self.table.columns)
        if missing:
            raise ValueError(f"LabelledImages table lacks columns {sorted(missing)}")
        bad = self.table.loc[(self.table["label"] < 0) | (self.table["label"] >= len(self.classes)), "label"]
        if len(bad):
            raise ValueError(f"labels {sorted(set(bad))} are outside the {len(self.classes)} classes {self.classes}")

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, index: Sequence[int] | np.ndarray) -> "LabelledImages":
        """The images at positions ``index``."""
        return LabelledImages(self.table.iloc[np.asarray(index)].reset_index(drop=True), self.classes, self.mpp)


def read_class_folders(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None, mpp: float | None = None) -> LabelledImages:
    """Folder-per-class images: ``root/<class name>/<image>``.

    Parameters
    ----------
    root : path
    classes : sequence of str, optional
        Class order (default: sorted folder names). Folders not listed are ignored.
    mpp : float, optional
        Microns per pixel of the images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = list(classes) if classes is not None else folders
    unknown = [c for c in classes if c not in folders]
    if unknown:
        raise ValueError(f"{root}: no folder for class(es) {unknown}; folders: {folders}")
    rows = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"image": str(f), "label": label, "group": f.stem, "annotation": None, "name": f.stem})
    if not rows:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders {classes}")
    return LabelledImages(pd.DataFrame(rows), classes, mpp)


def read_label_table(
    path: str | os.PathLike[str],
    *,
    label_column: str = "label",
    image_column: str = "image",
    group_column: str | None = None,
    annotation_column: str | None = None,
    classes: Sequence[str] | None = None,
    mpp: float | None = None,
) -> LabelledImages:
    """A CSV table of images and labels; relative paths are relative to the CSV's folder.

    Parameters
    ----------
    path : path
        The CSV file.
    label_column, image_column : str
        Column names.
    group_column : str, optional
        Patient (or slide) column: cross-validation splits never separate a group.
        Default: each image is its own group.
    annotation_column : str, optional
        Column of annotation-mask paths (for :func:`annotated_patches`).
    classes : sequence of str, optional
        Class names in label order (default: sorted distinct labels).
    mpp : float, optional
        Microns per pixel of the images.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label table")
    df = pd.read_csv(path)
    for col in [image_column, label_column] + [c for c in (group_column, annotation_column) if c]:
        if col not in df.columns:
            raise ValueError(f"{path}: no column {col!r}; columns: {list(df.columns)}")
    names = df[label_column].astype(str).str.strip()
    classes = list(classes) if classes is not None else sorted(names.unique())
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not among the classes {classes}")
    base = path.parent
    def resolve(p: Any) -> str | None:
        if p is None or (isinstance(p, float) and np.isnan(p)) or (isinstance(p, str) and not p.strip()):
            return None
        return str(p if Path(p).is_absolute() else base / p)

    table = pd.DataFrame(
        {
            "image": df[image_column].map(resolve),
            "label": names.map({c: i for i, c in enumerate(classes)}).astype(int),
            "group": df[group_column].astype(str) if group_column else df[image_column].map(lambda p: Path(p).stem),
            "annotation": df[annotation_column].map(resolve).astype(object) if annotation_column else None,
            "name": df[image_column].map(lambda p: Path(p).stem),
        }
    )
    missing = [p for p in table["image"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} image(s) listed but missing, e.g. {missing[0]}")
    return LabelledImages(table, classes, mpp)


def _patch_rows(i: int, row: pd.Series, slide: Any, spec: TileSpec, grid: pd.DataFrame, kind: str) -> pd.DataFrame:
    grid = grid.copy()
    grid["item"] = i
    grid["label"] = int(row["label"])
    grid["group"] = row["group"]
    grid["name"] = row["name"]
    grid["kind"] = kind
    return grid


def annotated_patches(
    images: LabelledImages,
    *,
    size: int = 96,
    mpp: float | None = None,
    overlap: float = 0.3,
    min_annotation: float = 0.5,
    n_random: int = 8,
    rng: int | np.random.Generator | None = None,
) -> pd.DataFrame:
    """Patches from annotated regions (Kim et al., Fig. 4): sliding window + random placement.

    Parameters
    ----------
    images : LabelledImages
        With an ``annotation`` mask per image (pixels > 0 are annotated).
    size : int
        Patch side in pixels (at ``mpp``).
    mpp : float, optional
        Patch resolution; default: the images' own.
    overlap : float
        Overlap of consecutive sliding-window patches (0.3: they share 30 % of their width).
    min_annotation : float
        Keep patches at least this fraction annotated.
    n_random : int
        Randomly placed patches per image (centres inside the annotation), for variety.
    rng : int or numpy.random.Generator, optional
        Seed of the random placement.

    Returns
    -------
    pandas.DataFrame
        One row per patch: the tile-table columns (``x``, ``y``, ``w0``, ``h0``, ``size``,
        ``mpp``, ...) plus ``item`` (row of ``images.table``), ``label``, ``group``, ``name``,
        ``kind`` ("grid" or "random").
    """
    gen = np.random.default_rng(rng)
    spec = TileSpec(size=size, mpp=mpp, downsample=None if mpp is not None else 1.0, overlap=overlap)
    parts = []
    for i, row in images.table.iterrows():
        if row["annotation"] is None or (isinstance(row["annotation"], float) and np.isnan(row["annotation"])):
            raise ValueError(f"{row['image']}: no annotation mask for annotated_patches")
        with open_slide(row["image"], mpp=images.mpp) as slide:
            mask = Mask.from_image(row["annotation"], slide)
            grid = tile_grid(slide, spec, annotation=mask, min_annotation=min_annotation)
            parts.append(_patch_rows(i, row, slide, spec, grid, "grid"))
            if n_random:
                rand = sample_tiles(slide, n_random, spec, tissue=mask, min_tissue=0.0, annotation=mask, min_annotation=min_annotation, rng=gen)
                parts.append(_patch_rows(i, row, slide, spec, rand, "random"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def whole_image_patches(images: LabelledImages, *, size: int = 96, mpp: float | None = None, overlap: float = 0.3) -> pd.DataFrame:
    """Sliding-window patches over whole images (no annotation filter), e.g. for image-level prediction."""
    spec = TileSpec(size=size, mpp=mpp, downsample=None if mpp is not None else 1.0, overlap=overlap)
    parts = []
    for i, row in images.table.iterrows():
        with open_slide(row["image"], mpp=images.mpp) as slide:
            parts.append(_patch_rows(i, row, slide, spec, tile_grid(slide, spec), "grid"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


class PatchDataset(Dataset):
    """Patches of labelled images, for training and evaluation.

    The (small) images are decoded once per process and kept in memory; each item reads its
    patch at the table's resolution through the slide API, then applies ``transform``.

    Parameters
    ----------
    images : LabelledImages
    patches : pandas.DataFrame
        From :func:`annotated_patches` / :func:`whole_image_patches`.
    transform : callable, optional
        ``(3, H, W)`` float tensor -> tensor (e.g. :class:`histoscope.stain.Augmentation`).
    pixels : callable, optional
        HxWx3 uint8 -> HxWx3 uint8 applied first (e.g. the model's stain normalisation).

    Items are ``(image, label)``: ``(3, H, W)`` float32 in [0, 1] and an int.
    """

    def __init__(
        self,
        images: LabelledImages,
        patches: pd.DataFrame,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pixels: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if len(patches) and not {"item", "x", "y", "size", "label"} <= set(patches.columns):
            raise ValueError(f"patches table lacks columns; has {list(patches.columns)}")
        self.images = images
        self.patches = patches.reset_index(drop=True)
        self.transform = transform
        self.pixels = pixels
        self._cache: dict[int, Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def labels(self) -> np.ndarray:
        return self.patches["label"].to_numpy(int)

    def _slide(self, item: int) -> Any:
        if self._pid != os.getpid():
            self._cache, self._pid = {}, os.getpid()
        if item not in self._cache:
            path = self.images.table.iloc[item]["image"]
            with open_slide(path, mpp=self.images.mpp) as s:
                pixels = s.read_region((0, 0), s.dimensions, level=0)
            self._cache[item] = open_slide(pixels, mpp=self.images.mpp)
        return self._cache[item]

    def read(self, index: int) -> np.ndarray:
        """The patch's pixels (HxWx3 uint8), without the transform."""
        r = self.patches.iloc[index]
        slide = self._slide(int(r["item"]))
        size = int(r["size"])
        mpp = r.get("mpp", np.nan)
        if mpp is not None and not (isinstance(mpp, float) and np.isnan(mpp)):
            return slide.read_region((int(r["x"]), int(r["y"])), (size, size), mpp=float(mpp))
        return slide.read_region((int(r["x"]), int(r["y"])), (size, size), downsample=float(r.get("downsample", 1.0)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        patch = self.read(index)
        if self.pixels is not None:
            patch = self.pixels(patch)
        x = image_to_tensor(patch)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.patches.iloc[index]["label"])
