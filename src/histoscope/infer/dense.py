"""Fully convolutional dense inference: a probability map over the whole slide in one pass.

The whole-slide mitosis paper (Tellez et al., 2018) trains an all-convolutional CNN on
patches and then runs the same weights *densely* over the slide: with valid padding and
no pooling, a ``(B, 3, H, W)`` input gives a ``(B, C, (H - S) // st + 1, (W - S) // st + 1)``
logit map whose element ``(i, j)`` is exactly the patch prediction for the ``S x S`` patch
whose top-left corner is at ``(st * i, st * j)`` (``S``: the patch side, ``st``: the
network's stride). Shared convolutions between overlapping patches are computed once, so
this is far cheaper than evaluating the patches one by one (see ``benchmarks/mitosis.py``).

Geometry
--------
At the model's resolution the image is padded (conceptually) by ``S // 2`` white pixels on
every side, so that map element ``(i, j)`` is the prediction for the patch *centred* on
model pixel ``(x, y) = (st * j, st * i)`` (its top-left corner at ``(st * j - S // 2,
st * i - S // 2)``); the map covers the whole image at stride ``st``. The padding costs
nothing: :meth:`~histoscope.slide.Slide.read_region` pads outside-slide pixels with white,
so tiles are simply read from negative coordinates.

The map is computed tile by tile. An output tile of ``tile / st`` x ``tile / st`` map
elements needs an input of ``tile + S - st`` pixels, and consecutive tiles start ``tile``
pixels apart, so their outputs abut exactly: no gaps and no element computed twice. The
stitched map therefore *equals* patch-by-patch evaluation. Tile positions come from the one
grid function, :func:`histoscope.tiles.tile_grid`, and are read by
:func:`histoscope.tiles.iter_tiles` (reader threads, bounded memory). With ``out=`` each tile
is written straight into its own chunk of a zarr array, so a whole slide never has to fit
in memory.

Coordinates are continuous level-0 coordinates in which pixel ``(x, y)`` covers
``[x, x + 1) x [y, y + 1)``; :meth:`DenseMap.to_level0` and :meth:`DenseMap.from_level0`
convert between map indices and slide positions.

References
----------
.. [1] Tellez, D., Balkenhol, M., Otte-Höller, I., et al. "Whole-slide mitosis detection in
   H&E breast histology using PHH3 as a reference to train distilled stain-invariant
   convolutional networks", IEEE Transactions on Medical Imaging 37(9), 2018.
.. [2] Long, J., Shelhamer, E., Darrell, T. "Fully convolutional networks for semantic
   segmentation", CVPR 2015 (dense evaluation of patch classifiers).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..slide.base import Slide
from ..slide.mask import Mask

__all__ = ["DenseMap", "dense_map"]

logger = logging.getLogger(__name__)


@dataclass
class DenseMap:
    """A dense probability map over a slide and where its elements lie.

    Attributes
    ----------
    probs : numpy.ndarray or zarr.Array
        ``(h, w)`` float32 probabilities; element ``(i, j)`` is the prediction for the patch
        centred at :meth:`to_level0` ``(i, j)``.
    stride_px : float
        Distance between neighbouring map elements, in level-0 pixels.
    origin_px : (float, float)
        Level-0 ``(x, y)`` of the centre of element ``(0, 0)``'s patch (continuous
        coordinates: pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``).
    mpp : float or None
        Microns per pixel the model ran at (the effective resolution read from the slide),
        None when neither the model nor the slide knows it.
    level0_mpp : float or None
        Microns per pixel of the slide's level 0.
    """

    probs: Any
    stride_px: float
    origin_px: tuple[float, float]
    mpp: float | None
    level0_mpp: float | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the map."""
        return tuple(int(v) for v in self.probs.shape)  # type: ignore[return-value]

    def to_level0(self, i: Any, j: Any) -> tuple[Any, Any]:
        """Level-0 ``(x, y)`` of the patch centre of map element(s) ``(i, j)`` (row, column).

        Accepts scalars or arrays (any broadcastable shapes); returns floats.
        """
        i = np.asarray(i, np.float64)
        j = np.asarray(j, np.float64)
        x = self.origin_px[0] + j * self.stride_px
        y = self.origin_px[1] + i * self.stride_px
        return (float(x), float(y)) if x.ndim == 0 and y.ndim == 0 else (x, y)

    def from_level0(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Index ``(i, j)`` of the map element whose patch centre is nearest to level-0 ``(x, y)``.

        Accepts scalars or arrays; returns ints (arrays of int64). Points outside the slide
        can give indices outside the map; they are not clipped.
        """
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        j = np.rint((x - self.origin_px[0]) / self.stride_px).astype(np.int64)
        i = np.rint((y - self.origin_px[1]) / self.stride_px).astype(np.int64)
        return (int(i), int(j)) if i.ndim == 0 and j.ndim == 0 else (i, j)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "DenseMap":
        """Open a map written by :func:`dense_map` with ``out=path`` (read-only)."""
        import zarr

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such dense map store")
        arr = zarr.open_array(str(path), mode="r")
        attrs = dict(arr.attrs)
        missing = [k for k in ("stride_px", "origin_px", "mpp", "level0_mpp") if k not in attrs]
        if missing:
            raise ValueError(f"{path}: not a histoscope dense map (attributes {missing} are missing)")
        ox, oy = attrs["origin_px"]
        return cls(arr, float(attrs["stride_px"]), (float(ox), float(oy)), attrs["mpp"], attrs["level0_mpp"])


def dense_map(
    slide_or_image: Slide | np.ndarray | str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    tile: int = 1024,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    mask: Mask | Literal["auto"] | None = None,
    out: str | os.PathLike[str] | None = None,
    channel: int = 1,
    workers: int = 2,
    verbose: bool = False,
) -> DenseMap:
    """Run a fully convolutional patch classifier densely over a slide.

    Implements the dense inference of Tellez et al. [1]_: one softmax probability per
    ``stride`` model pixels, equal (up to float rounding) to evaluating the patch centred
    there. See the module docstring for the geometry.

    Parameters
    ----------
    slide_or_image : Slide, numpy.ndarray or path
        A slide, an HxWx3 uint8 image, or a path for :func:`~histoscope.slide.open_slide`.
    model : torch.nn.Module
        A fully convolutional model with ``forward_dense``, ``stride`` and ``config``
        (e.g. ``create_model("mitosis_cnn", ...)``).
    mpp : float, optional
        Resolution (microns per pixel) to run at. Default: ``model.config.mpp``; when that
        is None too, the slide's level 0 as it is.
    slide_mpp : float, optional
        Level-0 resolution of an image or file that does not record it (used only when
        ``slide_or_image`` is not already a :class:`Slide`).
    tile : int
        Side of an output tile in model-resolution pixels (``tile / stride`` map elements);
        a multiple of ``model.stride``. Each read is ``tile + S - stride`` pixels.
    batch_size : int
        Tiles per forward pass.
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
    mask : Mask or "auto", optional
        Tissue mask: tiles whose input contains no tissue are skipped and left at 0.
        ``"auto"`` computes one with :func:`~histoscope.slide.tissue_mask`.
    out : path, optional
        Write the map to a zarr array at this path (one chunk per tile, written as tiles
        are computed; the store is completed under a temporary name and then renamed).
        Default: an in-memory numpy array.
    channel : int
        Class whose softmax probability is kept (1: mitosis for the mitosis CNN).
    workers : int
        Reader threads (see :func:`~histoscope.tiles.iter_tiles`).
    verbose : bool
        Show a progress bar over tiles.

    Returns
    -------
    DenseMap

    Raises
    ------
    TypeError
        ``model`` is not fully convolutional (no ``forward_dense``), or a wrong argument type.
    ValueError
        ``tile`` not a positive multiple of the stride, ``channel`` out of range, or ``out``
        names an existing path that is not a zarr store.
    MppUnavailableError
        A resolution is requested and the slide does not know its own (pass ``slide_mpp``),
        or the requested resolution is finer than the scan.

    Notes
    -----
    With a stain transform in the model's config (``config.stain``), the transform is
    applied to each whole tile, so its statistics come from the tile rather than from each
    patch; without one, the map equals patch-by-patch evaluation. Tile origins are rounded
    to whole level-0 pixels; when ``stride`` and ``S / 2`` at the model's resolution span a
    whole number of level-0 pixels (e.g. 0.25 um/px slides run at 0.25 or 0.5 um/px) the
    grid is exact, otherwise positions are within half a level-0 pixel of
    :meth:`DenseMap.to_level0`.

    Examples
    --------
    >>> import numpy as np
    >>> from histoscope.models import create_model
    >>> model = create_model("mitosis_cnn", num_classes=2, input_size=64, width=0.25, mpp=0.25)
    >>> image = np.full((200, 300, 3), 230, np.uint8)
    >>> m = dense_map(image, model, slide_mpp=0.25, tile=64)
    >>> m.shape, m.stride_px, m.to_level0(1, 2)
    ((50, 75), 4.0, (8.0, 4.0))
    """
    from ..models.registry import stain_transform
    from ..slide.reader import open_slide
    from ..tiles import TileSpec, iter_tiles, tile_grid
    from ..utils.convert import image_to_tensor

    if not callable(getattr(model, "forward_dense", None)) or not hasattr(model, "stride") or not hasattr(model, "config"):
        raise TypeError(
            f"dense_map needs a fully convolutional model with forward_dense, stride and config "
            f"(e.g. create_model('mitosis_cnn', ...)); got {type(model).__name__}"
        )
    cfg = model.config
    st = int(model.stride)
    S = int(cfg.input_size)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
        raise TypeError(f"tile must be an int, got {tile!r}")
    if tile <= 0 or tile % st:
        raise ValueError(f"tile must be a positive multiple of the model's stride {st}, got {tile}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise TypeError(f"channel must be an int, got {channel!r}")
    if not 0 <= channel < cfg.num_classes:
        raise ValueError(f"channel must be in [0, {cfg.num_classes - 1}] for a {cfg.num_classes}-class model, got {channel}")
    if not (mask is None or isinstance(mask, Mask) or (isinstance(mask, str) and mask == "auto")):
        raise TypeError(f"mask must be None, 'auto' or a Mask, got {type(mask).__name__}")

    owned = not isinstance(slide_or_image, Slide)
    slide = open_slide(slide_or_image, mpp=slide_mpp) if owned else slide_or_image
    try:
        run_mpp = mpp if mpp is not None else cfg.mpp
        if run_mpp is not None:
            res = slide.resolve(mpp=run_mpp)
            spec = TileSpec(size=tile + S - st, mpp=run_mpp, stride=tile)
        else:
            res = slide.resolve(downsample=1.0)
            spec = TileSpec(size=tile + S - st, mpp=None, downsample=1.0, stride=tile)
        ds = res.downsample
        level0 = slide.mpp
        level0_mpp = float(np.mean(level0)) if level0 is not None else None
        eff_mpp = level0_mpp * ds if level0_mpp is not None else None

        # map size: one element per `st` model pixels, centres at 0, st, 2 st, ... inside the image
        wm, hm = slide.size_at(ds)
        h, w = -(-hm // st), -(-wm // st)
        per = tile // st  # map elements per tile side
        ntx, nty = -(-w // per), -(-h // per)
        pad = S // 2
        rx = ry = int(round(-pad * ds))  # level-0 corner of the first tile (padding by S/2)
        need_w, need_h = st * (w - 1) + S, st * (h - 1) + S  # padded model pixels the map needs
        if isinstance(mask, str):
            from ..slide.mask import tissue_mask

            mask = tissue_mask(slide)
        table = tile_grid(
            slide, spec, region=(rx, ry, int(round(need_w * ds)), int(round(need_h * ds))), tissue=mask, edge="pad"
        )
        kx = np.rint((table["x"].to_numpy() - rx) / (tile * ds)).astype(np.int64)
        ky = np.rint((table["y"].to_numpy() - ry) / (tile * ds)).astype(np.int64)
        keep = (kx < ntx) & (ky < nty)  # rounding of the region can add a tile past the map
        if mask is not None:
            keep &= table["tissue"].to_numpy() > 0
        table, kx, ky = table.loc[keep].reset_index(drop=True), kx[keep], ky[keep]
        logger.info(
            "dense map %s: %dx%d elements (stride %g level-0 px), %d of %d tiles of %d px",
            slide.name, h, w, st * ds, len(table), ntx * nty, spec.size,
        )

        origin = (rx + S / 2 * ds, ry + S / 2 * ds)
        attrs = {
            "stride_px": float(st * ds),
            "origin_px": [float(origin[0]), float(origin[1])],
            "mpp": eff_mpp,
            "level0_mpp": level0_mpp,
            "channel": int(channel),
            "model": cfg.arch,
            "input_size": S,
            "stride": st,
            "slide": slide.path or slide.name,
        }
        if out is None:
            probs: Any = np.zeros((h, w), np.float32)
            final = tmp = None
        else:
            final, tmp = _prepare_store(Path(out))
            probs = _create_zarr(tmp, (h, w), (per, per), attrs)

        from ..train.engine import resolve_device

        dev = resolve_device(device)
        was_training = model.training
        model = model.to(dev).eval()
        pixels = stain_transform(cfg)
        batch: list[np.ndarray] = []
        done = 0

        def flush() -> None:
            nonlocal batch, done
            if not batch:
                return
            x = image_to_tensor(np.stack(batch)).to(dev)
            with torch.inference_mode():
                p = torch.softmax(model.forward_dense(x).float(), 1)[:, channel].cpu().numpy()
            for k in range(len(batch)):
                r0, c0 = int(ky[done + k]) * per, int(kx[done + k]) * per
                rows, cols = min(per, h - r0), min(per, w - c0)
                probs[r0 : r0 + rows, c0 : c0 + cols] = p[k, :rows, :cols]
            done += len(batch)
            batch = []

        try:
            for t in iter_tiles(slide, table, workers=workers, verbose=verbose, desc=f"dense {slide.name}"):
                batch.append(pixels(t) if pixels is not None else t)
                if len(batch) == batch_size:
                    flush()
            flush()
        finally:
            model.train(was_training)
        if tmp is not None:
            from ..utils.stores import publish_store

            publish_store(tmp, final)
            import zarr

            probs = zarr.open_array(str(final), mode="r")
        return DenseMap(probs, float(st * ds), (float(origin[0]), float(origin[1])), eff_mpp, level0_mpp)
    finally:
        if owned:
            slide.close()


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def _prepare_store(out: Path) -> tuple[Path, Path]:
    """Check ``out`` and return it with a fresh temporary path beside it."""
    from ..utils.stores import prepare_store

    return prepare_store(out, is_ours=_is_zarr_store, what="dense map")


def _create_zarr(path: Path, shape: tuple[int, int], chunks: tuple[int, int], attrs: dict[str, Any]) -> Any:
    """A float32 zarr array filled with 0 (``open_array`` works with zarr 2 and 3 alike)."""
    import zarr

    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype="float32", fill_value=0.0)
    arr.attrs.update(attrs)
    return arr

