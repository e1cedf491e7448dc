"""Mitosis training data from the real sets in ../shared/data: positives, same-source and hard negatives.

Positives are the AMi-Br crops (128 x 128 at about 0.25 um/px, each centred on a mitotic
figure).  Negatives come from two places, on purpose:

* **same source** — patches of the AMi-Br crops centred at least 8 um away from the
  mitosis (the off-centre parts of the positives' own crops: same labs, scanners and
  stain, so colour cannot tell them apart from positives);
* **hard, cross-source** — MoNuSeg tumour fields at 40x: patches centred on annotated
  non-mitotic nuclei (dark, round: what a mitosis detector confuses), on H&E candidates
  (:func:`histoscope.mitosis.candidates.detect_candidates`, when given) and at random.

../shared/data/MANIFEST.md and DESIGN.md explain why: a colour-only classifier separates AMi-Br
from MoNuSeg with AUC ~0.98, so MoNuSeg-only negatives teach the source, not mitosis.

Everything is split by patient (AMi-Br ``patient_key``, MoNuSeg TCGA patient).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..tiles.labelled import LabelledImages

__all__ = [
    "MITOSIS_CLASSES",
    "MitosisData",
    "read_amibr",
    "read_monuseg",
    "split_groups",
    "offcentre_offsets",
    "mitosis_samples",
]

MITOSIS_CLASSES = ["non-mitosis", "mitosis"]
#: AMi-Br and MoNuSeg are 40x scans at about 0.25 um/px (MANIFEST.md).
DATA_MPP = 0.25
Split = Literal["train", "val", "test"]


@dataclass
class MitosisData:
    """Images and the patch table cut from them.

    Attributes
    ----------
    images : LabelledImages
        AMi-Br crops (label 1) then MoNuSeg fields (label 0); ``classes`` = ``MITOSIS_CLASSES``.
    samples : pandas.DataFrame
        One patch per row: ``item`` (row of ``images.table``), ``x``, ``y`` (top-left),
        ``size``, ``label`` (1 mitosis), ``kind`` (``mitosis``, ``amibr_offcentre``,
        ``monuseg_nucleus``, ``monuseg_candidate``, ``monuseg_random``), ``distance_um``
        (from the patch centre to the crop's mitosis; NaN for MoNuSeg), ``group``
        (patient), ``split``, ``source``, ``atypical`` (1/0 for mitoses, -1 otherwise).
        Readable by :class:`histoscope.tiles.labelled.PatchDataset`.
    """

    images: LabelledImages
    samples: pd.DataFrame

    def subset(self, split: Split | None = None, *, kinds: list[str] | None = None) -> pd.DataFrame:
        """Rows of ``samples`` in ``split`` (and of the given kinds)."""
        s = self.samples
        if split is not None:
            s = s[s["split"] == split]
        if kinds is not None:
            s = s[s["kind"].isin(kinds)]
        return s.reset_index(drop=True)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what} (see ../shared/data/MANIFEST.md for the expected layout)")
    return path


def read_amibr(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The AMi-Br crops: ``image``, ``group`` (patient), ``source``, ``atypical``, ``cx``, ``cy``.

    ``root`` is the ``amibr_128`` folder (with ``labels.csv``); the mitosis is at the crop's centre.
    """
    root = Path(root)
    t = pd.read_csv(_need(root / "labels.csv", "AMi-Br label table"))
    for col in ("file", "label_atypical", "patient_key", "source_dataset"):
        if col not in t.columns:
            raise ValueError(f"{root / 'labels.csv'}: no column {col!r}; columns: {list(t.columns)}")
    images = [str(root / f) for f in t["file"]]
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{root / 'labels.csv'}: {len(missing)} listed crop(s) missing, e.g. {missing[0]}")
    from PIL import Image

    with Image.open(images[0]) as im:
        w, h = im.size
    return pd.DataFrame(
        {
            "image": images,
            "group": t["patient_key"].astype(str),
            "source": t["source_dataset"].astype(str),
            "atypical": t["label_atypical"].astype(int),
            "cx": w / 2.0,
            "cy": h / 2.0,
            "width": w,
            "height": h,
        }
    )


def read_monuseg(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The MoNuSeg fields: ``image``, ``group`` (patient), ``organ``, ``mask`` (nucleus mask path)."""
    root = Path(root)
    t = pd.read_csv(_need(root / "labels.csv", "MoNuSeg label table"))
    return pd.DataFrame(
        {
            "image": [str(_need(root / f, "MoNuSeg image")) for f in t["image"]],
            "group": t["patient"].astype(str),
            "organ": t["organ"].astype(str),
            "mask": [str(root / f) if isinstance(f, str) else None for f in t["binary_mask"]],
            "source": "MoNuSeg",
        }
    )


def split_groups(groups: pd.Series | np.ndarray, *, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` per row; every patient lands in exactly one split.

    Patients are shuffled with ``seed`` and assigned greedily so that each split's share of
    *rows* is close to ``fractions`` (patients differ a lot in size).
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups = pd.Series(np.asarray(groups)).astype(str)
    sizes = groups.value_counts()
    order = np.random.default_rng(seed).permutation(sorted(sizes.index))
    names = np.array(["train", "val", "test"])
    target = f * len(groups)
    filled = np.zeros(3)
    assign: dict[str, str] = {}
    for g in order:
        k = int(np.argmax(target - filled))  # the split furthest below its target
        assign[g] = names[k]
        filled[k] += sizes[g]
    return groups.map(assign).to_numpy()


def offcentre_offsets(patch: int, crop: int, *, mpp: float, min_distance_um: float = 8.0, corners_only: bool = False) -> list[tuple[int, int]]:
    """Centre offsets (dx, dy) of ``patch``-sized windows inside a ``crop``-sized crop, >= ``min_distance_um`` off centre.

    Offsets lie on the crop's border band (the furthest a window can go) at the corners
    and half-way between; ``corners_only`` keeps the four corners (the farthest: the
    same-source test of DESIGN.md).  Empty when no window fits far enough away.
    """
    m = (crop - patch) // 2
    if m <= 0:
        return []
    cand = [(sx * m, sy * m) for sx in (-1, 1) for sy in (-1, 1)]
    if not corners_only:
        h = m // 2
        cand += [(sx * m, sy * h) for sx in (-1, 1) for sy in (-1, 1)] + [(sx * h, sy * m) for sx in (-1, 1) for sy in (-1, 1)]
    return [(dx, dy) for dx, dy in cand if np.hypot(dx, dy) * mpp >= min_distance_um]


def _nucleus_centres(mask_path: str | None) -> np.ndarray:
    if mask_path is None or not Path(mask_path).is_file():
        return np.zeros((0, 2))
    from PIL import Image
    from scipy import ndimage as ndi

    m = np.asarray(Image.open(mask_path)) > 0
    lab, n = ndi.label(m)
    if n == 0:
        return np.zeros((0, 2))
    cy, cx = np.asarray(ndi.center_of_mass(m, lab, np.arange(1, n + 1))).T
    return np.stack([cx, cy], 1)


def mitosis_samples(
    root: str | os.PathLike[str],
    *,
    patch: int = 64,
    mpp: float = DATA_MPP,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    jitter_px: int = 6,
    copies: int = 2,
    nuclei_per_field: int | None = 400,
    random_per_field: int = 200,
    candidates: dict[str, np.ndarray] | None = None,
    min_distance_um: float = 8.0,
) -> MitosisData:
    """The patch table for mitosis training and evaluation.

    Parameters
    ----------
    root : path
        The shared data folder (with ``mitosis/amibr_128`` and ``monuseg``).
    patch : int
        Patch side in pixels (64: the paper's 64 px variant; same-source negatives need
        ``patch <= 64`` with 128 px crops at 0.25 um/px, see :func:`offcentre_offsets`).
    mpp : float
        Microns per pixel of the data (0.25).
    seed : int
        Patient split and random positions.
    fractions : (train, val, test)
        Share of AMi-Br crops per split (by patient).  MoNuSeg's eight patients go
        5 / 1 / 2 (train / val / test), by the same seed.
    jitter_px : int
        Training positives are centred up to this many pixels off the mitosis (the
        network's output stride is 4); evaluation positives are exactly centred.
    copies : int
        Jittered training positives per crop.
    nuclei_per_field, random_per_field : int
        MoNuSeg negatives per field (``None``: every annotated nucleus).  Test fields
        keep every nucleus.
    candidates : dict, optional
        ``{image path: (N, 2) array of (x, y)}`` H&E candidates per MoNuSeg field,
        added as ``monuseg_candidate`` negatives.
    min_distance_um : float
        Off-centre negatives are at least this far from the mitosis (the 8 um matching radius).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    amibr = read_amibr(root / "mitosis" / "amibr_128")
    monuseg = read_monuseg(root / "monuseg")
    amibr["split"] = split_groups(amibr["group"], fractions=fractions, seed=seed)
    pats = np.random.default_rng(seed).permutation(sorted(monuseg["group"].unique()))
    mon_split = {p: ("test" if i < 2 else "val" if i < 3 else "train") for i, p in enumerate(pats)}
    monuseg["split"] = monuseg["group"].map(mon_split)

    table = pd.concat(
        [
            pd.DataFrame({"image": amibr["image"], "label": 1, "group": amibr["group"], "annotation": None, "name": amibr["image"].map(lambda p: Path(p).stem)}),
            pd.DataFrame({"image": monuseg["image"], "label": 0, "group": monuseg["group"], "annotation": None, "name": monuseg["image"].map(lambda p: Path(p).stem)}),
        ],
        ignore_index=True,
    )
    images = LabelledImages(table, list(MITOSIS_CLASSES), mpp)
    half = patch // 2
    rows: list[dict] = []

    def add(item: int, cx: float, cy: float, label: int, kind: str, meta: dict, dist: float) -> None:
        rows.append({"item": item, "x": int(round(cx)) - half, "y": int(round(cy)) - half, "size": patch, "label": label, "kind": kind, "distance_um": dist, **meta})

    if not offcentre_offsets(patch, int(amibr["width"].min()), mpp=mpp, min_distance_um=min_distance_um):
        import logging

        logging.getLogger(__name__).warning(
            "%d px patches cannot be cut %.0f um off centre from %d px AMi-Br crops: no same-source negatives, so the model "
            "may learn the source instead of mitosis (DESIGN.md); use --patch 64 or larger crops",
            patch, min_distance_um, int(amibr["width"].min()),
        )  # fmt: skip
    for i, r in amibr.iterrows():
        meta = {"group": r["group"], "split": r["split"], "source": r["source"], "atypical": int(r["atypical"])}
        train = r["split"] == "train"
        if train:
            for _ in range(copies):
                dx, dy = rng.integers(-jitter_px, jitter_px + 1, 2)
                add(i, r["cx"] + dx, r["cy"] + dy, 1, "mitosis", meta, float(np.hypot(dx, dy) * mpp))
        else:
            add(i, r["cx"], r["cy"], 1, "mitosis", meta, 0.0)
        crop = int(min(r["width"], r["height"]))
        for dx, dy in offcentre_offsets(patch, crop, mpp=mpp, min_distance_um=min_distance_um, corners_only=not train):
            add(i, r["cx"] + dx, r["cy"] + dy, 0, "amibr_offcentre", {**meta, "atypical": -1}, float(np.hypot(dx, dy) * mpp))

    from PIL import Image

    for j, r in monuseg.iterrows():
        item = len(amibr) + j
        meta = {"group": r["group"], "split": r["split"], "source": "MoNuSeg", "atypical": -1}
        with Image.open(r["image"]) as im:
            w, h = im.size

        def inside(xy: np.ndarray) -> np.ndarray:
            return xy[(xy[:, 0] >= half) & (xy[:, 1] >= half) & (xy[:, 0] <= w - half) & (xy[:, 1] <= h - half)]

        nuclei = inside(_nucleus_centres(r["mask"]))
        if r["split"] != "test" and nuclei_per_field is not None and len(nuclei) > nuclei_per_field:
            nuclei = nuclei[rng.choice(len(nuclei), nuclei_per_field, replace=False)]
        for cx, cy in nuclei:
            add(item, cx, cy, 0, "monuseg_nucleus", meta, np.nan)
        if candidates is not None and r["image"] in candidates:
            for cx, cy in inside(np.asarray(candidates[r["image"]], dtype=float).reshape(-1, 2)):
                add(item, cx, cy, 0, "monuseg_candidate", meta, np.nan)
        for cx, cy in zip(rng.uniform(half, w - half, random_per_field), rng.uniform(half, h - half, random_per_field)):
            add(item, cx, cy, 0, "monuseg_random", meta, np.nan)
    samples = pd.DataFrame(rows)
    samples["downsample"] = 1.0
    return MitosisData(images, samples)


def audit_patches(data: MitosisData, *, split: Split = "test", per_class: int = 20, seed: int = 0) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """Real patches for the one-pixel audit: ``per_class`` mitoses and ``per_class`` non-mitoses.

    The non-mitoses are half same-source (AMi-Br off-centre) and half MoNuSeg nuclei, so that
    an attack cannot lean on the source shortcut alone.  Drawn reproducibly from ``split``
    (held-out patients by default).  Returns the ``(S, S, 3)`` uint8 images, names
    ``<kind>/<group>/<item>@<x>,<y>`` and labels (1 mitosis).
    """
    from ..tiles.labelled import PatchDataset

    rng = np.random.default_rng(seed)
    rows = data.subset(split)
    if rows.empty:
        raise ValueError(f"no patches in the {split!r} split")
    picks = []
    quota = {"mitosis": per_class, "amibr_offcentre": per_class // 2, "monuseg_nucleus": per_class - per_class // 2}
    for kind, n in quota.items():
        pool = rows[rows["kind"] == kind]
        if len(pool) < n:
            raise ValueError(f"the {split!r} split has {len(pool)} {kind} patches, fewer than the {n} asked for")
        picks.append(pool.iloc[np.sort(rng.choice(len(pool), n, replace=False))])
    chosen = pd.concat(picks).reset_index(drop=True)
    ds = PatchDataset(data.images, chosen)
    images = [ds.read(i) for i in range(len(chosen))]
    names = [f"{r.kind}/{r.group}/{r.item}@{r.x},{r.y}" for r in chosen.itertuples()]
    return images, names, chosen["label"].to_numpy(int)
