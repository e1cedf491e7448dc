"""Brute-force one-pixel confidence maps (the one-pixel paper's section 2.2, equation 2, Algorithm 1).

For every pixel ``(x, y)`` and every colour ``c`` of a set ``C``, the image with that one
pixel replaced by ``c`` is scored; the scores of the class of interest are reduced per pixel
to their minimum, maximum and mean.  The perturbed images are never materialised all at
once: each batch is built on the target's device from the original image (or scored
incrementally, :class:`~histoscope.robustness.scoring.PixelScorer`), reduced on the device as
it goes, and the partial maps are checkpointed so that a long run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .scoring import Mode, PixelScorer, as_colours, colour_grid
from .target import Target

__all__ = ["ConfidenceMaps", "confidence_maps", "DEFAULT_COLOUR_STEP", "PAPER_COLOUR_STEP"]

#: The paper's colour set: every 5th value per channel including 255 (52^3 = 140,608 colours).
PAPER_COLOUR_STEP = 5
#: A CPU-sized default: 0, 85, 170, 255 per channel (4^3 = 64 colours, the corners and inner lattice of the RGB cube).
DEFAULT_COLOUR_STEP = 85


@dataclass
class ConfidenceMaps:
    """Per-pixel min / max / mean score of one class over a colour set (NaN where not computed)."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    done: np.ndarray
    original: float
    class_name: str
    n_colours: int
    evaluations: int
    seconds: float
    mode: str

    @property
    def evaluations_per_second(self) -> float:
        return self.evaluations / self.seconds if self.seconds > 0 else float("nan")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the maps as one ``.npz`` (``min``, ``max``, ``mean``, ``done`` and the metadata)."""
        path = Path(path)
        meta = {k: getattr(self, k) for k in ("original", "class_name", "n_colours", "evaluations", "seconds", "mode")}
        np.savez_compressed(path, min=self.min, max=self.max, mean=self.mean, done=self.done, meta=json.dumps(meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfidenceMaps:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(min=z["min"], max=z["max"], mean=z["mean"], done=z["done"], **meta)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()


def _pixel_list(pixels: Any, h: int, w: int) -> np.ndarray:
    if pixels is None:
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack([yy.ravel(), xx.ravel()], 1)
    p = np.asarray(pixels)
    if p.dtype == bool:
        if p.shape != (h, w):
            raise ValueError(f"a pixel mask must be {h} x {w}, got {p.shape}")
        return np.argwhere(p)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pixels must be an (n, 2) list of (y, x) or an {h} x {w} boolean mask, got shape {p.shape}")
    if p.min() < 0 or (p[:, 0] >= h).any() or (p[:, 1] >= w).any():
        raise ValueError(f"pixel positions outside the {h} x {w} image")
    return p.astype(np.int64)


def confidence_maps(
    target: Target,
    image: np.ndarray,
    *,
    colours: int | np.ndarray | None = None,
    pixels: Any = None,
    class_index: int | str | None = None,
    mode: Mode = "auto",
    batch_size: int = 1024,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every_s: float = 30.0,
    verbose: bool = True,
    scorer: PixelScorer | None = None,
) -> ConfidenceMaps:
    """Brute-force one-pixel confidence maps of ``image`` (Algorithm 1).

    Parameters
    ----------
    colours : int, (n, 3) array or None
        A step (every ``step``-th value per channel including 255: 5 is the paper's 140,608
        colours) or an explicit colour list.  Default :data:`DEFAULT_COLOUR_STEP`.
    pixels : (n, 2) array of (y, x), boolean mask or None
        The pixels to perturb (None: all).
    class_index : int or str, optional
        The class whose score is mapped (default: the last, e.g. ``mitosis``).
    checkpoint : path, optional
        A ``.npz`` that partial maps are written to every ``checkpoint_every_s`` seconds and
        at the end; if it exists (same image, colours, pixels and model) the run resumes.
    """
    from tqdm.auto import tqdm

    sc = scorer if scorer is not None else PixelScorer(target, image, mode=mode, batch_size=batch_size)
    h, w = sc.height, sc.width
    if colours is None:
        colours = DEFAULT_COLOUR_STEP
    cset = colour_grid(int(colours)) if np.isscalar(colours) else as_colours(colours)
    c = len(target.classes) - 1 if class_index is None else target.class_index(class_index)
    plist = _pixel_list(pixels, h, w)
    dev = sc.device
    n_c = len(cset)
    key = {"image": _digest(sc.image), "colours": _digest(cset), "pixels": _digest(plist), "model": target.name, "class": c}

    mn = torch.full((h * w,), float("inf"), device=dev)
    mx = torch.full((h * w,), float("-inf"), device=dev)
    sm = torch.zeros(h * w, dtype=torch.float64, device=dev)
    done = np.zeros((h, w), dtype=bool)
    evaluations, seconds = 0, 0.0
    ck = Path(checkpoint) if checkpoint is not None else None
    if ck is not None and ck.exists():
        with np.load(ck) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                raise ValueError(f"{ck}: a checkpoint of a different run (image, colours, pixels, model or class differ); remove it or choose another path")
            mn = torch.as_tensor(z["min"].ravel(), device=dev).float()
            mx = torch.as_tensor(z["max"].ravel(), device=dev).float()
            sm = torch.as_tensor(z["sum"].ravel(), device=dev).double()
            done = z["done"].copy()
            evaluations, seconds = int(meta["evaluations"]), float(meta["seconds"])

    def save() -> None:
        if ck is None:
            return
        tmp = ck.with_name(ck.name + ".tmp.npz")
        meta = {"key": key, "evaluations": evaluations, "seconds": seconds, "n_colours": n_c, "original": float(sc.original[c])}
        np.savez(tmp, min=mn.cpu().numpy().reshape(h, w), max=mx.cpu().numpy().reshape(h, w), sum=sm.cpu().numpy().reshape(h, w), done=done, meta=json.dumps(meta))
        os.replace(tmp, ck)  # atomic: a kill mid-write leaves the previous checkpoint intact

    todo = plist[~done[plist[:, 0], plist[:, 1]]]
    colours_t = torch.as_tensor(cset, device=dev).float()
    per_batch = max(1, batch_size // n_c)  # whole pixels per batch (colour chunks when the set is large)
    last_save = time.perf_counter()
    bar = tqdm(total=len(todo) * n_c, desc=f"confidence maps ({sc.mode})", unit="eval", unit_scale=True, disable=not verbose)
    try:
        for i in range(0, len(todo), per_batch):
            chunk = todo[i : i + per_batch]
            t0 = time.perf_counter()
            pos = torch.as_tensor(chunk, device=dev)
            flat = (pos[:, 0] * w + pos[:, 1]).repeat_interleave(n_c)
            ys, xs = pos[:, 0].repeat_interleave(n_c), pos[:, 1].repeat_interleave(n_c)
            cols = colours_t.repeat(len(chunk), 1)
            scores = sc(ys, xs, cols)[:, c]
            mn.scatter_reduce_(0, flat, scores, "amin")
            mx.scatter_reduce_(0, flat, scores, "amax")
            sm.index_add_(0, flat, scores.double())
            done[chunk[:, 0], chunk[:, 1]] = True
            evaluations += len(flat)
            seconds += time.perf_counter() - t0
            bar.update(len(flat))
            if ck is not None and time.perf_counter() - last_save > checkpoint_every_s:
                save()
                last_save = time.perf_counter()
    finally:
        bar.close()
        save()
    dn = done.ravel()
    nan = np.float32("nan")
    out_min = np.where(dn, mn.cpu().numpy(), nan).reshape(h, w).astype(np.float32)
    out_max = np.where(dn, mx.cpu().numpy(), nan).reshape(h, w).astype(np.float32)
    out_mean = np.where(dn, (sm.cpu().numpy() / n_c), nan).reshape(h, w).astype(np.float32)
    name = target.classes[c] if c < len(target.classes) else str(c)
    return ConfidenceMaps(min=out_min, max=out_max, mean=out_mean, done=done, original=float(sc.original[c]), class_name=name, n_colours=n_c, evaluations=evaluations, seconds=seconds, mode=sc.mode)
