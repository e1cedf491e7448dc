"""MITOS-BOXES: detection targets for MITOS-RCNN from the centroid-annotated mitosis data.

MITOS-RCNN (Rao 2018) trains a Faster R-CNN on boxes drawn around annotated mitosis
centroids, on high-power fields split into 16 sub-images, rotated by 90/180/270 degrees,
after Macenko stain normalisation. Here, with the real data of ../shared/data:

* **boxes** — a square of ``box_um`` microns around each centroid (:func:`boxes_from_centroids`;
  default 8 um = 32 px at 0.25 um/px: a mitotic figure is about 30 px, and 8 um is also
  the matching radius of the evaluation, so a box centred within the radius overlaps the
  true one);
* **positives** — the AMi-Br crops (128 px, the mitosis at the centre), cut as random
  ``window`` px windows (default 96) so that the mitosis lies anywhere within +-16 px of the
  window centre (+-4 um) and then rotated. Everything else in the window is same-source
  background: the crop's other nuclei are negatives of the detector automatically, which
  is what defeats the source shortcut of DESIGN.md (pasting crops on a canvas would add
  seams that only positives have, another shortcut, so it is not done);
* **negatives** — MoNuSeg 40x fields (no mitosis) split into 16 sub-images each
  (:func:`split_subimages`, the paper's 16 per HPF), random ``window`` px windows of them;
* **stain** — every crop and sub-image is Macenko-normalised on its own (the existing
  :class:`histoscope.stain.MacenkoNormalizer`, to Macenko's reference stains), as the
  detector normalises every sub-image it sees.

Patients are split exactly as the dense detector's data (:func:`histoscope.datasets.mitosis.mitosis_samples`,
same seed): test patients are never trained on or used for checkpoint selection.
The paper resizes each sub-image to 299 px; here sub-images keep the data's 0.25 um/px
(the model's ``mpp``), which is what the network sees at detection time too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .mitosis import DATA_MPP, MitosisData, Split

__all__ = ["DEFAULT_BOX_UM", "BoxImage", "boxes_from_centroids", "subimage_origins", "split_subimages", "rotate_points", "box_images", "MitosisBoxes", "collate"]

#: Side of the square box drawn around each annotated centroid, in microns.
DEFAULT_BOX_UM = 8.0


def boxes_from_centroids(centroids: Any, *, mpp: float, box_um: float = DEFAULT_BOX_UM, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Square boxes of ``box_um`` microns centred on ``(x, y)`` centroids (MITOS-BOXES).

    Parameters
    ----------
    centroids : (N, 2) array_like
        ``x``, ``y`` in pixels (continuous coordinates: pixel ``i`` spans ``[i, i + 1)``).
    mpp : float
        Microns per pixel of the image.
    box_um : float
        Box side in microns (8 um = 32 px at 0.25 um/px).
    image_shape : (height, width), optional
        Clip the boxes to the image.

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` float32 ``x1, y1, x2, y2``.

    Examples
    --------
    >>> boxes_from_centroids([[64, 64]], mpp=0.25, box_um=8.0)
    array([[48., 48., 80., 80.]], dtype=float32)
    """
    if not (mpp > 0 and box_um > 0):
        raise ValueError(f"mpp and box_um must be positive, got mpp={mpp!r}, box_um={box_um!r}")
    xy = np.asarray(centroids, dtype=np.float64).reshape(-1, 2) if np.size(centroids) else np.zeros((0, 2))
    half = box_um / mpp / 2.0
    boxes = np.concatenate([xy - half, xy + half], 1)
    if image_shape is not None:
        h, w = image_shape
        boxes = np.clip(boxes, 0, [w, h, w, h])
    return boxes.astype(np.float32)


def subimage_origins(height: int, width: int, *, tile: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Top-left corners of ``tile`` px sub-images covering a ``height`` x ``width`` image.

    Positions come from histoscope's one tiling grid (:func:`histoscope.tiles.grid.grid_positions`,
    stride ``tile - overlap``, row-major); the last row / column is shifted back to end at
    the image's edge instead of reaching past it. An image smaller than ``tile`` is one
    sub-image at (0, 0) (the caller reads it padded or as it is).
    """
    from ..tiles.grid import grid_positions

    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")

    def axis(n: int) -> np.ndarray:
        pos = grid_positions(0, n, tile, tile - overlap, edge="pad")
        return np.unique(np.clip(pos, 0, max(n - tile, 0)))

    return [(int(x), int(y)) for y in axis(height) for x in axis(width)]


def split_subimages(image: np.ndarray, *, n: int = 16, size: int | None = None) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Split a field into ``n`` equal sub-images (a square grid: 16 = 4 x 4, the paper's split of an HPF).

    Parameters
    ----------
    image : (H, W, 3) uint8
    n : int
        A square number.
    size : int, optional
        Resize each sub-image to ``size`` x ``size`` (the paper: 299); default: keep the
        resolution (then the sub-image side is ``min(H, W) // sqrt(n)``).

    Returns
    -------
    list of ((x, y), sub-image)
        Top-left corner in the field and the ``(s, s, 3)`` uint8 sub-image.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    k = int(round(math.sqrt(n)))
    if n < 1 or k * k != n:
        raise ValueError(f"n must be a square number of sub-images (4, 9, 16, ...), got {n}")
    side = min(image.shape[:2]) // k
    if side < 8:
        raise ValueError(f"a {image.shape[1]} x {image.shape[0]} image is too small for {n} sub-images")
    out = []
    for x, y in subimage_origins(side * k, side * k, tile=side):
        sub = image[y : y + side, x : x + side]
        if size is not None and size != side:
            from PIL import Image

            sub = np.asarray(Image.fromarray(sub).resize((size, size), Image.Resampling.BILINEAR))
        out.append(((x, y), np.ascontiguousarray(sub)))
    return out


def rotate_points(xy: np.ndarray, k: int, size: tuple[int, int]) -> np.ndarray:
    """Where ``(x, y)`` points go when their ``(height, width)`` image is rotated by ``np.rot90(image, k)``.

    Continuous coordinates (pixel ``i`` spans ``[i, i + 1)``); one counter-clockwise quarter
    turn maps ``(x, y)`` to ``(y, width - x)``.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    h, w = size
    for _ in range(k % 4):
        xy = np.stack([xy[:, 1], w - xy[:, 0]], 1)
        h, w = w, h
    return xy


@dataclass
class BoxImage:
    """One detection image: pixels (stain-normalised), its mitosis centroids and where it came from."""

    image: np.ndarray
    centroids: np.ndarray
    kind: str  # "amibr" or "monuseg"
    item: int  # row of MitosisData.images.table
    origin: tuple[int, int] = (0, 0)  # top-left in the source image (sub-images)
    group: str = ""


def _normalizer(stain: str | None) -> Any:
    if stain is None:
        return None
    if stain != "macenko":
        raise ValueError(f"stain must be None or 'macenko', got {stain!r}")
    from ..models.registry import ModelConfig, stain_transform

    return stain_transform(ModelConfig(arch="mitos_rcnn", num_classes=2, stain="macenko"))


def box_images(data: MitosisData, split: Split, *, stain: str | None = "macenko", subimages: int = 16, monuseg: bool = True) -> list[BoxImage]:
    """The AMi-Br crops and MoNuSeg sub-images of ``split`` (patients as in ``data``), stain-normalised.

    AMi-Br crops carry one centroid (their centre); each MoNuSeg field of the split gives
    ``subimages`` sub-images without centroids.
    """
    from PIL import Image

    norm = _normalizer(stain)
    rows = data.subset(split)
    table = data.images.table
    out: list[BoxImage] = []
    amibr = sorted(set(rows.loc[rows["kind"] == "mitosis", "item"]))
    for item in amibr:
        img = np.asarray(Image.open(table.loc[item, "image"]).convert("RGB"))
        img = norm(img) if norm else img
        h, w = img.shape[:2]
        out.append(BoxImage(img, np.array([[w / 2.0, h / 2.0]]), "amibr", int(item), (0, 0), str(table.loc[item, "group"])))
    if monuseg:
        for item in sorted(set(rows.loc[rows["kind"].str.startswith("monuseg"), "item"])):
            field = np.asarray(Image.open(table.loc[item, "image"]).convert("RGB"))
            for origin, sub in split_subimages(field, n=subimages):
                out.append(BoxImage(norm(sub) if norm else sub, np.zeros((0, 2)), "monuseg", int(item), origin, str(table.loc[item, "group"])))
    return out


class MitosisBoxes(Dataset):
    """Training or evaluation images with box targets, for MITOS-RCNN.

    Item ``i`` is ``(image, target)``: a ``(3, S, S)`` float tensor in [0, 1] and
    ``{"boxes": (N, 4) float32, "labels": (N,) int64}`` (label 1 = mitosis; MoNuSeg
    sub-images have none).

    Parameters
    ----------
    images : list of BoxImage
    window : int or None
        Training: a random ``window`` px window of each image (the mitosis at a varying
        offset) and a random rotation by 0/90/180/270 degrees. None: the whole image, as
        it is (evaluation).
    mpp, box_um
        Box size (see :func:`boxes_from_centroids`).
    seed : int
        Windows and rotations are drawn from ``(seed, epoch, index)``: replayable.
    rotate : bool
    """

    def __init__(self, images: list[BoxImage], *, window: int | None = 96, mpp: float = DATA_MPP, box_um: float = DEFAULT_BOX_UM, seed: int = 0, rotate: bool = True) -> None:
        if not images:
            raise ValueError("no images")
        if window is not None:
            small = [b for b in images if min(b.image.shape[:2]) < window]
            if small:
                raise ValueError(f"window {window} px is larger than {len(small)} image(s), e.g. {small[0].image.shape[:2]}")
        self.images = images
        self.window = window
        self.mpp = float(mpp)
        self.box_um = float(box_um)
        self.seed = int(seed)
        self.rotate = bool(rotate)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def params(self, index: int) -> tuple[int, int, int]:
        """The window's top-left ``(x, y)`` and the number of quarter turns of item ``index`` this epoch."""
        b = self.images[index]
        h, w = b.image.shape[:2]
        if self.window is None:
            return 0, 0, 0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x, y = (int(v) for v in rng.integers(0, [w - self.window + 1, h - self.window + 1]))
        k = int(rng.integers(0, 4)) if self.rotate else 0
        return x, y, k

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as an ``(S, S, 3)`` uint8 image and its ``(N, 2)`` centroids."""
        b = self.images[index]
        x, y, k = self.params(index)
        img = b.image
        xy = b.centroids.reshape(-1, 2)
        if self.window is not None:
            s = self.window
            img = img[y : y + s, x : x + s]
            xy = xy - [x, y]
            xy = xy[(xy[:, 0] >= 0) & (xy[:, 0] < s) & (xy[:, 1] >= 0) & (xy[:, 1] < s)]
        if k:
            xy = rotate_points(xy, k, img.shape[:2])
            img = np.rot90(img, k)
        return np.ascontiguousarray(img), xy

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from ..utils.convert import image_to_tensor

        img, xy = self.read(index)
        boxes = boxes_from_centroids(xy, mpp=self.mpp, box_um=self.box_um, image_shape=img.shape[:2])
        return image_to_tensor(img), {"boxes": torch.from_numpy(boxes).reshape(-1, 4), "labels": torch.ones(len(boxes), dtype=torch.int64)}


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack same-size images; keep the targets as a list (a DataLoader ``collate_fn``)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

