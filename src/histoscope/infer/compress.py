"""Neural Image Compression of a slide into a grid of patch embeddings (Tellez et al., NIC).

A slide is cut into ``P x P`` patches with stride ``S`` at a given resolution (the paper:
P = S = 128 px at 0.5 um/px) by the one tiling grid (:func:`~histoscope.tiles.tile_grid`),
every patch with tissue is encoded into a ``C``-vector by a patch encoder
(:mod:`histoscope.models.nic`), and the codes are laid out as an array of shape
``(rows, cols, C)``: one cell per patch, in the patches' own spatial arrangement, so an
ordinary CNN can be trained on the compressed slide.  Background patches are not read nor
encoded; their cells stay zero and the ``tissue`` grid (fraction of each patch inside the
tissue mask) says which cells hold codes.

Memory is bounded on any slide size: the grid is processed in bands of ``chunk`` rows,
each band's patches are read (threads), encoded in batches and written to a chunked zarr
store before the next band starts.  The store is completed under ``.NAME.partial`` and
renamed, so an interrupted run never leaves a store that looks finished.

Layout of a compressed slide (a zarr group):

=============== ============================================================
``embeddings``  float32 ``(rows, cols, C)``, zeros where nothing was encoded
``tissue``      float32 ``(rows, cols)``, tissue fraction of each patch
attrs           encoder config, patch/stride (px at the working resolution),
                ``mpp``, ``stride_level0``/``patch_level0`` (level-0 px, float),
                ``origin`` (level-0 corner of cell (0, 0)), slide name/size,
                patches encoded, seconds, histoscope version
=============== ============================================================

Cell ``(i, j)`` covers level-0 ``x in [ox + j * s0, ox + j * s0 + p0)`` (same for y),
with ``s0 = stride_level0`` and ``p0 = patch_level0``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..slide.base import Slide
from ..slide.mask import Mask

__all__ = ["CompressedSlide", "compress", "embedding_rgb"]

logger = logging.getLogger(__name__)

FORMAT = "histoscope-nic-compressed/1"


@dataclass
class CompressedSlide:
    """A compressed slide: the embedding grid, the tissue grid and their geometry.

    ``embeddings`` is a zarr array when the slide was written to (or opened from) a store,
    otherwise a numpy array; :meth:`load` gives numpy either way.
    """

    embeddings: Any
    tissue: np.ndarray
    attrs: dict[str, Any]
    path: Path | None = None
    _cache: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.embeddings.shape)  # type: ignore[return-value]

    @property
    def code_size(self) -> int:
        return int(self.embeddings.shape[2])

    def load(self) -> np.ndarray:
        """The embedding grid as a float32 numpy array ``(rows, cols, C)`` (read once)."""
        if self._cache is None:
            self._cache = np.asarray(self.embeddings[...], dtype=np.float32)
        return self._cache

    def cell_to_level0(self, i: Any, j: Any) -> tuple[Any, Any]:
        """Level-0 (x, y) of the centre of cell(s) ``(i, j)`` (row, column)."""
        s0, p0 = self.attrs["stride_level0"], self.attrs["patch_level0"]
        ox, oy = self.attrs["origin"]
        return ox + np.asarray(j) * s0 + p0 / 2, oy + np.asarray(i) * s0 + p0 / 2

    def to_slide_image(self, values: np.ndarray, size: tuple[int, int], *, fill: Any = 0) -> np.ndarray:
        """Lay a per-cell map ``(rows, cols[, k])`` over the slide, as an image of ``size`` = (width, height).

        Pixel ``(u, v)`` of the result shows the cell whose patch contains the level-0 point
        ``(u + 0.5, v + 0.5) * slide_size / size`` (with overlapping patches: the cell whose
        stride step contains it); points outside the grid get ``fill``. Use it to put a
        Grad-CAM map or an embedding picture on a thumbnail of the same slide.
        """
        vals = np.asarray(values)
        rows, cols = self.shape[:2]
        if vals.shape[:2] != (rows, cols):
            raise ValueError(f"values must have the grid's shape ({rows}, {cols}), got {vals.shape}")
        w, h = (int(v) for v in size)
        W, H = self.attrs["slide_dimensions"]
        s0 = self.attrs["stride_level0"]
        ox, oy = self.attrs["origin"]
        j = np.floor(((np.arange(w) + 0.5) * W / w - ox) / s0).astype(np.int64)
        i = np.floor(((np.arange(h) + 0.5) * H / h - oy) / s0).astype(np.int64)
        ok_j, ok_i = (j >= 0) & (j < cols), (i >= 0) & (i < rows)
        out = vals[np.ix_(np.clip(i, 0, rows - 1), np.clip(j, 0, cols - 1))]
        out[~ok_i] = fill
        out[:, ~ok_j] = fill
        return out

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "CompressedSlide":
        """Open a store written by :func:`compress` (read-only)."""
        import zarr

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no compressed slide here (expected a zarr folder written by compress)")
        try:
            g = zarr.open_group(str(p), mode="r")
            emb, tissue = g["embeddings"], np.asarray(g["tissue"][...], np.float32)
            attrs = dict(g.attrs)
        except Exception as exc:  # noqa: BLE001 - name the store and the problem
            raise ValueError(f"{p}: not a compressed slide ({type(exc).__name__}: {exc})") from None
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{p}: not a compressed slide (format {attrs.get('format')!r}, expected {FORMAT!r})")
        return cls(emb, tissue, attrs, p)


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def compress(
    slide: Slide,
    encoder: torch.nn.Module,
    *,
    patch: int | None = None,
    stride: int | None = None,
    mpp: float | None | Literal["encoder"] = "encoder",
    tissue: Mask | Literal["auto"] | None = "auto",
    min_tissue: float = 0.05,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    chunk: int = 32,
    device: str | torch.device = "cpu",
    workers: int = 2,
    verbose: bool = False,
) -> CompressedSlide:
    """Compress ``slide`` into a ``(rows, cols, C)`` grid of patch codes with ``encoder``.

    Parameters
    ----------
    slide : Slide
    encoder : PatchEncoder
        From :func:`histoscope.models.nic.load_encoder` / ``create_encoder``: ``encode``
        maps ``(B, 3, P, P)`` floats in [0, 1] to ``(B, C)``.
    patch : int, optional
        Patch side in px at the working resolution; default the encoder's ``patch_size``
        (an encoder with a fixed input size accepts only that).
    stride : int, optional
        Grid step in px; default ``patch`` (non-overlapping, as in the paper).
    mpp : float, None or "encoder"
        Working resolution; ``"encoder"`` (default) takes the encoder's ``mpp``; None reads
        level 0 as it is (images without a known resolution, e.g. the synthetic digits).
    tissue : Mask, "auto" or None
        Patches with less than ``min_tissue`` of their area in tissue are skipped (left as
        zeros). ``"auto"``: :func:`~histoscope.slide.tissue_mask`; None: encode every patch.
    out : path, optional
        zarr folder to write (chunk by chunk; replaced atomically if it exists and is a
        compressed slide). Default: in memory.
    batch_size : int
        Patches per forward pass.
    chunk : int
        Grid rows (and columns) per zarr chunk; a band of ``chunk`` rows is held at once.
    device, workers, verbose
        Torch device, reader threads, progress bar.

    Returns
    -------
    CompressedSlide

    Raises
    ------
    MppUnavailableError
        A resolution is asked for and the slide records none.
    ValueError
        A patch size the encoder cannot take, bad sizes, or ``out`` is something else than a
        compressed slide.
    """
    from .._version import __version__
    from ..slide.mask import tissue_mask
    from ..tiles import TileSpec, iter_tiles, tile_grid
    from ..utils.device import resolve_device
    from ..utils.convert import image_to_tensor
    from ..utils.memory import release_memory

    if not callable(getattr(encoder, "encode", None)) or not hasattr(encoder, "config"):
        raise TypeError(f"encoder must be a histoscope patch encoder (models.nic), got {type(encoder).__name__}")
    cfg = dict(encoder.config)
    fixed = not getattr(encoder, "any_size", False)
    P = _check_int("patch", patch if patch is not None else encoder.patch_size)
    if fixed and P != int(encoder.patch_size):
        raise ValueError(f"the {cfg.get('kind')} encoder takes {encoder.patch_size} px patches, got patch={P}")
    S = _check_int("stride", stride if stride is not None else P)
    batch_size = _check_int("batch_size", batch_size)
    chunk = _check_int("chunk", chunk)
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue!r}")
    run_mpp = encoder.mpp if isinstance(mpp, str) and mpp == "encoder" else mpp
    if run_mpp is not None:
        slide.require_mpp()
        spec = TileSpec(size=P, mpp=float(run_mpp), stride=S)
    else:
        spec = TileSpec(size=P, mpp=None, downsample=1.0, stride=S)
    if isinstance(tissue, str):
        if tissue != "auto":
            raise ValueError(f"tissue must be a Mask, 'auto' or None, got {tissue!r}")
        tissue = tissue_mask(slide)

    t0 = time.perf_counter()
    table = tile_grid(slide, spec, tissue=tissue, edge="pad")  # every patch, tissue fraction in 'tissue'
    res = slide.resolve(level=spec.level, mpp=spec.mpp, downsample=spec.downsample)
    s0, p0 = S * res.downsample, P * res.downsample
    xs, ys = table["x"].to_numpy(), table["y"].to_numpy()
    ux, uy = np.unique(xs), np.unique(ys)
    cols, rows = len(ux), len(uy)
    col = np.searchsorted(ux, xs)
    row = np.searchsorted(uy, ys)
    frac = np.ones(len(table), np.float32) if tissue is None else table["tissue"].to_numpy(np.float32)
    keep = frac >= max(min_tissue, 1e-9) if tissue is not None else np.ones(len(table), bool)
    tissue_grid = np.zeros((rows, cols), np.float32)
    tissue_grid[row, col] = frac
    C = int(encoder.code_size)
    level0_mpp = float(np.mean(slide.mpp)) if slide.mpp is not None else None
    attrs: dict[str, Any] = {
        "format": FORMAT,
        "encoder": cfg,
        "encoder_name": getattr(encoder, "name", None) or cfg.get("kind"),
        "patch": P,
        "stride": S,
        "mpp": level0_mpp * res.downsample if level0_mpp is not None else None,
        "downsample": float(res.downsample),
        "stride_level0": float(s0),
        "patch_level0": float(p0),
        "origin": [float(ux[0]) if cols else 0.0, float(uy[0]) if rows else 0.0],
        "slide": slide.path or slide.name,
        "slide_name": slide.name,
        "slide_dimensions": [int(v) for v in slide.dimensions],
        "min_tissue": float(min_tissue) if tissue is not None else None,
        "histoscope": __version__,
    }
    logger.info("compress %s: %d x %d grid, %d of %d patches with tissue", slide.name, rows, cols, int(keep.sum()), len(table))

    final = tmp = None
    if out is None:
        emb: Any = np.zeros((rows, cols, C), np.float32)
    else:
        import zarr

        from ..utils.stores import prepare_store

        final, tmp = prepare_store(out, is_ours=_is_compressed, what="compressed slide")
        g = zarr.open_group(str(tmp), mode="w")
        emb = g.create_array("embeddings", shape=(rows, cols, C), chunks=(chunk, chunk, C), dtype="float32", fill_value=0.0)
        tis = g.create_array("tissue", shape=(rows, cols), chunks=(chunk * 4, chunk * 4), dtype="float32", fill_value=0.0)
        tis[...] = tissue_grid

    dev = resolve_device(device)
    was_training = encoder.training
    encoder = encoder.to(dev).eval()
    prep = encoder.preprocess() if callable(getattr(encoder, "preprocess", None)) else None
    order = np.flatnonzero(keep)
    n_total = len(order)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_total, desc=f"compress {slide.name}", unit="patch", disable=not verbose, leave=False)
    try:
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            band_idx = order[np.searchsorted(row[order], r0) : np.searchsorted(row[order], r1)]  # the grid is row-major
            band = np.zeros((r1 - r0, cols, C), np.float32)
            if len(band_idx):
                sub = table.iloc[band_idx]
                br, bc = row[band_idx] - r0, col[band_idx]
                batch: list[np.ndarray] = []
                done = 0
                for t in iter_tiles(slide, sub, workers=workers):
                    batch.append(prep(t) if prep is not None else t)
                    if len(batch) == batch_size:
                        done = _encode(encoder, batch, dev, band, br, bc, done, image_to_tensor)
                        bar.update(len(batch))
                        batch = []
                if batch:
                    done = _encode(encoder, batch, dev, band, br, bc, done, image_to_tensor)
                    bar.update(len(batch))
            emb[r0:r1] = band
            del band
            release_memory()
    finally:
        bar.close()
        encoder.train(was_training)
    attrs["patches_encoded"] = int(n_total)
    attrs["patches_total"] = int(len(table))
    attrs["seconds"] = round(time.perf_counter() - t0, 3)
    if tmp is None:
        return CompressedSlide(emb, tissue_grid, attrs)
    g.attrs.update(attrs)
    from ..utils.stores import publish_store

    publish_store(tmp, final)
    return CompressedSlide.open(final)


def _encode(encoder, batch, dev, band, br, bc, done, image_to_tensor) -> int:
    x = image_to_tensor(np.stack(batch)).to(dev)
    with torch.inference_mode():
        z = encoder.encode(x).float().cpu().numpy()
    n = len(batch)
    band[br[done : done + n], bc[done : done + n]] = z
    return done + n


def _is_compressed(path: Path) -> bool:
    return path.is_dir() and (path / "embeddings").is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))


def embedding_rgb(compressed: CompressedSlide | np.ndarray, tissue: np.ndarray | None = None, *, background: int = 255, seed: int = 0) -> np.ndarray:
    """A picture of an embedding grid: its first three principal components as RGB.

    PCA (scikit-learn) is fitted on the cells with tissue (at most 50,000, drawn with
    ``seed``); each component is stretched between its 1st and 99th percentile. Each cell's
    colour is blended with ``background`` (white, like glass) by its tissue fraction, so cells
    without tissue are background and mostly-glass patches look pale. Returns
    ``(rows, cols, 3)`` uint8.
    """
    from sklearn.decomposition import PCA

    if isinstance(compressed, CompressedSlide):
        emb, tis = compressed.load(), compressed.tissue
    else:
        emb = np.asarray(compressed, np.float32)
        tis = np.ones(emb.shape[:2], np.float32) if tissue is None else np.asarray(tissue)
    if emb.ndim != 3:
        raise ValueError(f"expected an embedding grid (rows, cols, C), got shape {emb.shape}")
    inside = (tis > 0) & np.isfinite(emb).all(axis=2)
    out = np.full(emb.shape[:2] + (3,), background, np.uint8)
    codes = emb[inside]
    if len(codes) < 2:
        return out
    rng = np.random.default_rng(seed)
    fit = codes if len(codes) <= 50_000 else codes[rng.choice(len(codes), 50_000, replace=False)]
    k = min(3, fit.shape[1], len(fit))
    pca = PCA(n_components=k, random_state=seed).fit(fit)
    comp = pca.transform(codes)
    lo, hi = np.percentile(comp, 1, axis=0), np.percentile(comp, 99, axis=0)
    scaled = np.clip((comp - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    rgb = np.zeros((len(codes), 3), np.float32)
    rgb[:, :k] = scaled
    if k < 3:
        rgb[:, k:] = scaled[:, :1]
    # blend with the background by tissue fraction: patches that are mostly glass look pale
    t = np.clip(tis[inside], 0, 1)[:, None].astype(np.float32)
    out[inside] = np.round(255 * (rgb * t + (background / 255.0) * (1 - t))).astype(np.uint8)
    return out


def compress_file(
    path: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    encoder: str | os.PathLike[str],
    slide_mpp: float | None = None,
    patch: int | None = None,
    stride: int | None = None,
    mpp: float | None | Literal["encoder"] = "encoder",
    min_tissue: float = 0.05,
    batch_size: int = 128,
    device: str = "cpu",
    workers: int = 2,
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """One per-slide job of ``histoscope nic compress`` (picklable for Dask).

    Writes ``<out_dir>/<slide name>.zarr`` (the compressed slide) and
    ``<out_dir>/<slide name>-embedding.png`` (:func:`embedding_rgb`, one pixel per cell,
    enlarged to about 512 px). A store that is already complete for the same encoder, patch,
    stride and resolution is kept unless ``force``. Returns a summary dict.
    """
    from PIL import Image

    from ..models.nic import load_encoder
    from ..slide.base import slide_name
    from ..slide.reader import open_slide

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = slide_name(path)
    store = out / f"{name}.zarr"
    png = out / f"{name}-embedding.png"
    enc = load_encoder(encoder, device=device)
    enc.name = os.fspath(encoder)
    want = {"encoder": dict(enc.config), "patch": patch or enc.patch_size, "stride": stride or patch or enc.patch_size}
    if not force and _is_compressed(store) and png.is_file():
        try:
            done = CompressedSlide.open(store)
            if all(done.attrs.get(k) == v for k, v in want.items()):
                return _summary(done, store, png, skipped=True)
        except ValueError:
            pass
    with open_slide(path, mpp=slide_mpp) as slide:
        c = compress(
            slide, enc, patch=patch, stride=stride, mpp=mpp, min_tissue=min_tissue, out=store,
            batch_size=batch_size, device=device, workers=workers, verbose=verbose,
        )
    rgb = embedding_rgb(c)
    k = max(1, 512 // max(rgb.shape[:2]))
    tmp = png.with_name(f".{png.name}.partial")
    Image.fromarray(np.kron(rgb, np.ones((k, k, 1), np.uint8))).save(tmp, format="PNG")
    os.replace(tmp, png)
    return _summary(c, store, png, skipped=False)


def _summary(c: CompressedSlide, store: Path, png: Path, *, skipped: bool) -> dict[str, Any]:
    rows, cols, C = c.shape
    return {
        "slide": c.attrs["slide_name"],
        "store": str(store),
        "picture": str(png),
        "grid": f"{rows} x {cols} x {C}",
        "encoder": c.attrs.get("encoder_name"),
        "patches_encoded": c.attrs.get("patches_encoded"),
        "patches_total": c.attrs.get("patches_total"),
        "seconds": c.attrs.get("seconds"),
        "skipped": skipped,
    }
