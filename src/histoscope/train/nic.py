"""Training and evaluating the patch encoders of Neural Image Compression (Tellez et al. [1]_).

* :func:`sample_patch_pool`: random P x P patches (in tissue) from a set of slides, each
  optionally with one adjacent, non-overlapping neighbour (for contrastive training).
* :func:`train_encoder`: unsupervised training of the ``vae`` (eq. 2-3), ``contrastive``
  (Siamese same-location pairs) and ``bigan`` (eq. 6) encoders.
* :func:`train_supervised_encoder`: a small tissue classifier whose features are the
  ``supervised`` encoder.
* :func:`evaluate_encoders`: the paper's Table 1: each frozen encoder's codes feed a small
  MLP classifier (scikit-learn); accuracy per class, overall and balanced.

Every function takes a ``seed``: the same seed gives the same pool, the same weights (on
CPU, with the same number of torch threads) and the same table. The global torch random
state is left as it was (training runs inside :func:`torch.random.fork_rng`).

References
----------
.. [1] D. Tellez, G. Litjens, J. van der Laak, F. Ciompi, "Neural Image Compression for
       Gigapixel Histopathology Image Analysis", IEEE TPAMI 43(2), 2021 (arXiv:1811.02840).
.. [2] D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
.. [3] J. Donahue, P. Kraehenbuehl, T. Darrell, "Adversarial Feature Learning", ICLR 2017.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..models.nic import PatchEncoder, SupervisedEncoder, create_encoder
from ..slide.base import Slide
from ..utils.convert import image_to_tensor
from ..utils.device import resolve_device

__all__ = [
    "PatchPool",
    "sample_patch_pool",
    "kl_divergence",
    "vae_loss",
    "bigan_losses",
    "PairBatch",
    "make_pairs",
    "augment_batch",
    "train_encoder",
    "train_supervised_encoder",
    "evaluate_encoders",
    "NEIGHBOUR_DIRECTIONS",
]

log = logging.getLogger(__name__)

#: The 8 directions (dx, dy) of an adjacent patch, in units of the patch footprint.
NEIGHBOUR_DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))


# ---------------------------------------------------------------------------- patch pools
@dataclass
class PatchPool:
    """Patches for encoder training.

    Attributes
    ----------
    images : numpy.ndarray
        ``(n, P, P, 3)`` uint8.
    source : numpy.ndarray
        ``(n,)`` int, index of the slide (in ``sources``) each patch comes from.
    xy : numpy.ndarray or None
        ``(n, 2)`` int, level-0 top-left corner of each patch (None for in-memory patches).
    neighbours : numpy.ndarray or None
        ``(n, P, P, 3)`` uint8: one adjacent, non-overlapping patch per anchor.
    neighbour_xy : numpy.ndarray or None
        ``(n, 2)`` int, level-0 corners of the neighbours.
    sources : list of str
        Slide names.
    mpp : float or None
        Microns per pixel of the patches.
    footprint : list of int
        Level-0 side of a patch on each source (the neighbour offset).
    """

    images: np.ndarray
    source: np.ndarray
    xy: np.ndarray | None = None
    neighbours: np.ndarray | None = None
    neighbour_xy: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)
    mpp: float | None = None
    footprint: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        im = np.asarray(self.images)
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] != 3 or im.shape[1] != im.shape[2]:
            raise ValueError(f"images must be uint8 (n, P, P, 3), got {im.dtype} {im.shape}")
        self.images = im
        self.source = np.asarray(self.source, dtype=np.int64).reshape(-1)
        if self.source.shape != (len(im),):
            raise ValueError(f"source must have one entry per image ({len(im)}), got shape {self.source.shape}")
        if self.neighbours is not None and np.asarray(self.neighbours).shape != im.shape:
            raise ValueError(f"neighbours must have the shape of images {im.shape}, got {np.asarray(self.neighbours).shape}")
        if not self.sources:
            self.sources = [str(i) for i in range(int(self.source.max()) + 1 if len(self.source) else 0)]

    @classmethod
    def from_images(cls, images: np.ndarray, source: np.ndarray | None = None, *, mpp: float | None = None) -> "PatchPool":
        """A pool of in-memory patches (one source unless ``source`` is given)."""
        images = np.asarray(images)
        return cls(images=images, source=np.zeros(len(images), np.int64) if source is None else source, mpp=mpp)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def patch(self) -> int:
        """P."""
        return int(self.images.shape[1])


def _open_sources(sources: Sequence[Slide | str | os.PathLike[str]], stack: contextlib.ExitStack) -> list[Slide]:
    from ..slide.reader import open_slide

    out = []
    for s in sources:
        if isinstance(s, Slide):
            out.append(s)
        elif isinstance(s, (str, os.PathLike)):
            out.append(stack.enter_context(open_slide(s)))
        else:
            raise TypeError(f"sources must be Slides or slide paths, got {type(s).__name__}")
    return out


def sample_patch_pool(
    sources: Sequence[Slide | str | os.PathLike[str]],
    n: int,
    *,
    patch: int,
    mpp: float | None,
    tissue: bool = True,
    min_tissue: float = 0.5,
    neighbours: bool = False,
    seed: int = 0,
    verbose: bool = False,
) -> PatchPool:
    """``n`` random P x P patches from ``sources`` (about ``n / len(sources)`` from each).

    Patches are placed by :func:`~histoscope.tiles.sample_tiles`: centres drawn uniformly
    inside the tissue mask (:func:`~histoscope.slide.mask.tissue_mask`) with at least
    ``min_tissue`` of the patch in tissue when ``tissue=True``, uniformly over the whole
    slide otherwise.

    Parameters
    ----------
    sources : sequence of Slide or path
    n : int
        Number of patches (anchors).
    patch : int
        P, the side in output pixels.
    mpp : float or None
        Resolution of the patches (None: level 0).
    tissue : bool
        Sample inside tissue only.
    min_tissue : float
        Least tissue fraction of a patch (and of its neighbour) when ``tissue=True``.
    neighbours : bool
        Also read one adjacent, non-overlapping patch per anchor: offset by exactly one
        patch footprint in one of the 8 directions (drawn at random among those inside
        the slide and, with ``tissue=True``, in tissue), at the same resolution. Anchors
        with no valid neighbour are replaced by others.
    seed : int
    verbose : bool
        Progress bar.

    Returns
    -------
    PatchPool

    Raises
    ------
    ValueError
        When the slides do not hold ``n`` such patches (e.g. too little tissue).
    """
    from tqdm.auto import tqdm

    from ..slide.mask import Mask, tissue_mask
    from ..tiles.extract import read_tile
    from ..tiles.grid import TileSpec, sample_tiles

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive int, got {patch!r}")
    if len(sources) == 0:
        raise ValueError("sources is empty: give at least one slide")
    rng = np.random.default_rng(seed)
    spec = TileSpec(size=int(patch), mpp=mpp)
    counts = [n // len(sources) + (1 if i < n % len(sources) else 0) for i in range(len(sources))]
    images, nb_images, src, xy, nxy, names, footprints = [], [], [], [], [], [], []
    with contextlib.ExitStack() as stack:
        slides = _open_sources(sources, stack)
        bar = stack.enter_context(tqdm(total=n, desc="patch pool", unit="patch", disable=not verbose, leave=False))
        for i, (slide, k) in enumerate(zip(slides, counts)):
            names.append(slide.name)
            W, H = slide.dimensions
            if tissue:
                mask = tissue_mask(slide)
                min_t = float(min_tissue)
            else:
                mask = Mask(np.ones((max(1, H // 64), max(1, W // 64)), bool), (W, H), slide.mpp)
                min_t = 0.0
            res = slide.resolve(level=spec.level, mpp=spec.mpp, downsample=spec.downsample)
            extent = spec.size * res.downsample
            step = int(math.ceil(extent - 1e-9))  # level-0 offset of a neighbour: never overlaps
            footprints.append(step)
            got = 0
            for _ in range(50):
                if got >= k:
                    break
                table = sample_tiles(slide, 2 * (k - got) if neighbours else k - got, spec, tissue=mask, min_tissue=min_t, rng=rng)
                if len(table) == 0:
                    break
                if neighbours:
                    x, y = table["x"].to_numpy(), table["y"].to_numpy()
                    chosen = np.full(len(table), -1)
                    for j in range(len(table)):
                        order = rng.permutation(len(NEIGHBOUR_DIRECTIONS))
                        cx = x[j] + np.array([NEIGHBOUR_DIRECTIONS[d][0] for d in order]) * step
                        cy = y[j] + np.array([NEIGHBOUR_DIRECTIONS[d][1] for d in order]) * step
                        ok = (cx >= 0) & (cy >= 0) & (cx + extent <= W + 1e-6) & (cy + extent <= H + 1e-6)
                        if tissue and ok.any():
                            ok &= mask.coverage(cx, cy, np.full(cx.shape, extent), np.full(cx.shape, extent)) >= min_t
                        if ok.any():
                            chosen[j] = order[int(np.argmax(ok))]
                    keep = np.flatnonzero(chosen >= 0)[: k - got]
                    table = table.iloc[keep].reset_index(drop=True)
                    dirs = np.array([NEIGHBOUR_DIRECTIONS[d] for d in chosen[keep]], np.int64).reshape(-1, 2)
                else:
                    table = table.iloc[: k - got].reset_index(drop=True)
                for j in range(len(table)):
                    row = table.iloc[j]
                    images.append(read_tile(slide, row))
                    xy.append((int(row["x"]), int(row["y"])))
                    src.append(i)
                    if neighbours:
                        nrow = row.copy()
                        nrow["x"] = int(row["x"]) + int(dirs[j, 0]) * step
                        nrow["y"] = int(row["y"]) + int(dirs[j, 1]) * step
                        nb_images.append(read_tile(slide, nrow))
                        nxy.append((int(nrow["x"]), int(nrow["y"])))
                    bar.update(1)
                got += len(table)
            if got < k:
                where = slide.path or slide.name
                raise ValueError(
                    f"{where}: found only {got} of {k} {patch} px patches"
                    f"{' in tissue' if tissue else ''}{' with an adjacent neighbour' if neighbours else ''}; "
                    "ask for fewer patches, a smaller patch, or tissue=False"
                )
    eff_mpp = None if mpp is None else float(mpp)
    return PatchPool(
        images=np.stack(images),
        source=np.asarray(src, np.int64),
        xy=np.asarray(xy, np.int64),
        neighbours=np.stack(nb_images) if neighbours else None,
        neighbour_xy=np.asarray(nxy, np.int64) if neighbours else None,
        sources=names,
        mpp=eff_mpp,
        footprint=footprints,
    )


# ---------------------------------------------------------------------------- losses
def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, ``(B,)`` ([2]_ appendix B).

    ``-0.5 * sum(1 + logvar - mu^2 - exp(logvar))`` over the code dimensions.
    """
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    gamma: float = 1.0,
    recon_loss: Literal["mse", "bce"] = "mse",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VAE objective of [1]_ (eq. 2-3): reconstruction + ``gamma`` x KL, averaged over the batch.

    The reconstruction term is the squared error (``"mse"``) or the binary cross-entropy
    (``"bce"``) summed over the pixels of each patch; the KL term is
    :func:`kl_divergence` summed over the code.

    Returns
    -------
    (total, reconstruction, kl) : scalar tensors
    """
    if recon.shape != x.shape:
        raise ValueError(f"reconstruction shape {tuple(recon.shape)} differs from input {tuple(x.shape)}")
    if recon_loss == "mse":
        rec = (recon - x).pow(2).flatten(1).sum(1)
    elif recon_loss == "bce":
        rec = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="none").flatten(1).sum(1)
    else:
        raise ValueError(f"recon_loss must be 'mse' or 'bce', got {recon_loss!r}")
    kl = kl_divergence(mu, logvar)
    return (rec + gamma * kl).mean(), rec.mean(), kl.mean()


def bigan_losses(real_logit: torch.Tensor, fake_logit: torch.Tensor, *, saturating: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of the BiGAN game ([1]_ eq. 6; [3]_):
    ``min_{G,E} max_D V = E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))]``.

    Parameters
    ----------
    real_logit : torch.Tensor
        Logits of D on encoder pairs ``(x, E(x))``.
    fake_logit : torch.Tensor
        Logits of D on generator pairs ``(G(z), z)``.
    saturating : bool
        The E/G loss is ``V`` itself (True, the minimax form of eq. 6) or, by default, the
        non-saturating form with swapped labels, ``-E[log(1 - D(x, E(x)))] - E[log D(G(z), z)]``
        (same fixed point, usable gradients early in training; [3]_ section 3.4).

    Returns
    -------
    (loss_d, loss_ge)
        ``loss_d = -V`` (D ascends V); ``loss_ge`` for E and G.
    """
    log_d_real = F.logsigmoid(real_logit).mean()  # log D(x, E(x))
    log_1m_d_fake = F.logsigmoid(-fake_logit).mean()  # log(1 - D(G(z), z))
    value = log_d_real + log_1m_d_fake
    if saturating:
        return -value, value
    return -value, -(F.logsigmoid(-real_logit).mean() + F.logsigmoid(fake_logit).mean())


# ---------------------------------------------------------------------------- augmentation and pairs
def augment_batch(x: torch.Tensor, rng: np.random.Generator, *, heavy: bool = True) -> torch.Tensor:
    """Random augmentation of a batch ``(B, 3, P, P)`` in [0, 1], parameters drawn from ``rng``.

    Always a random rotation by a multiple of 90 degrees and mirror. ``heavy`` adds a random
    crop (60-100% of the side) resized back to P, H&E stain jitter in HED space
    (:func:`~histoscope.stain.augment_hed`, sigma 0.1), brightness and contrast jitter.
    """
    from ..stain.augmentation import hed_jitter, random_hed_params

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, P, P) batch, got {tuple(x.shape)}")
    b = x.shape[0]
    k = rng.integers(0, 4, size=b)
    flip = rng.random(b) < 0.5
    out = x.clone()
    for kk in range(4):  # exact rotations and mirrors, grouped by transform
        for ff in (False, True):
            sel = np.flatnonzero((k == kk) & (flip == ff))
            if sel.size:
                v = x[sel].flip(3) if ff else x[sel]
                out[sel] = torch.rot90(v, kk, (2, 3))
    if not heavy:
        return out
    scale = rng.uniform(0.6, 1.0, size=b)  # random crop of 60-100% of the side, resized back to P
    shift = (1.0 - scale)[:, None] * rng.uniform(-1.0, 1.0, size=(b, 2))
    theta = np.zeros((b, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(torch.as_tensor(theta, dtype=x.dtype, device=x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = hed_jitter(out, random_hed_params(rng, sigma=0.1, batch=b))
    bright = torch.as_tensor(rng.uniform(-0.1, 0.1, size=(b, 1, 1, 1)), dtype=x.dtype, device=x.device)
    contrast = torch.as_tensor(rng.uniform(0.75, 1.25, size=(b, 1, 1, 1)), dtype=x.dtype, device=x.device)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp(0.0, 1.0)


@dataclass
class PairBatch:
    """Pairs for contrastive training (uint8 images, before augmentation).

    Attributes
    ----------
    first, second : numpy.ndarray
        ``(B, P, P, 3)`` uint8.
    label : numpy.ndarray
        ``(B,)`` float32, 1 = same location, 0 = different.
    kind : numpy.ndarray
        ``(B,)`` str: ``"same"`` (one patch twice), ``"neighbour"`` (the anchor's adjacent
        patch) or ``"other"`` (a patch of another source).
    anchor : numpy.ndarray
        ``(B,)`` pool index of the first patch.
    partner : numpy.ndarray
        ``(B,)`` pool index of the second patch (for ``"neighbour"``: the anchor's own index,
        whose neighbour is used).
    """

    first: np.ndarray
    second: np.ndarray
    label: np.ndarray
    kind: np.ndarray
    anchor: np.ndarray
    partner: np.ndarray


def make_pairs(
    pool: PatchPool,
    anchors: np.ndarray,
    rng: np.random.Generator,
    *,
    same_fraction: float = 0.5,
    neighbour_fraction: float = 0.75,
) -> PairBatch:
    """Pairs of the contrastive task ([1]_ section 2.2.2) for the given anchors.

    ``round(same_fraction * B)`` pairs are "same location" (the anchor twice; the two
    copies are augmented independently). Of the "different" pairs, ``round(0.75 * n_diff)``
    pair the anchor with its adjacent neighbour, the rest (25%) with a random patch from
    another source (another slide). Roles are assigned to the anchors at random.

    With a single source there is no other slide: those pairs use a random other patch
    of the same source, with a warning.
    """
    if pool.neighbours is None:
        raise ValueError("contrastive pairs need neighbours: build the pool with sample_patch_pool(..., neighbours=True)")
    anchors = np.asarray(anchors, np.int64)
    b = len(anchors)
    n_same = int(round(same_fraction * b))
    n_diff = b - n_same
    n_nb = int(round(neighbour_fraction * n_diff))
    kind = np.array(["same"] * n_same + ["neighbour"] * n_nb + ["other"] * (n_diff - n_nb))
    kind = kind[rng.permutation(b)]
    partner = anchors.copy()
    second = pool.images[anchors].copy()
    nb = kind == "neighbour"
    second[nb] = pool.neighbours[anchors[nb]]
    other = np.flatnonzero(kind == "other")
    if other.size:
        n_src = len(np.unique(pool.source))
        if n_src < 2:
            warnings.warn(
                "the patch pool has one source: the 'other slide' pairs use random patches of the same slide",
                UserWarning,
                stacklevel=3,
            )
        for j in other:
            cand = np.flatnonzero(pool.source != pool.source[anchors[j]]) if n_src >= 2 else np.flatnonzero(np.arange(len(pool)) != anchors[j])
            partner[j] = cand[rng.integers(0, len(cand))]
        second[other] = pool.images[partner[other]]
    return PairBatch(
        first=pool.images[anchors],
        second=second,
        label=(kind == "same").astype(np.float32),
        kind=kind,
        anchor=anchors,
        partner=partner,
    )


# ---------------------------------------------------------------------------- training
@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for a block and restore them afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _batches(n: int, batch_size: int, rng: np.random.Generator, *, drop_last: bool) -> list[np.ndarray]:
    order = rng.permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[s : s + batch_size] for s in range(0, stop, batch_size)]


def _check_common(epochs: int, batch_size: int, lr: float) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")


def train_encoder(
    kind: Literal["mean_rgb", "vae", "contrastive", "bigan"],
    pool: PatchPool | np.ndarray,
    *,
    code_size: int = 128,
    width: int = 32,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    gamma: float = 1.0,
    recon_loss: Literal["mse", "bce"] = "mse",
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[PatchEncoder, dict[str, list[float]]]:
    """Train an encoder without labels on a patch pool ([1]_ section 2.2).

    ``vae``
        Reconstruction + ``gamma`` x KL (eq. 2-3, :func:`vae_loss`), with the
        reparameterisation trick; light augmentation (rotations, mirrors).
    ``contrastive``
        Siamese same-location task: half of each batch are "same" pairs (two heavy
        augmentations, :func:`augment_batch`, of one patch), the other half "different"
        pairs: 75% the anchor and its adjacent neighbour, 25% the anchor and a patch of
        another slide (:func:`make_pairs`); binary cross-entropy on the pair head. Needs a
        pool with neighbours.
    ``bigan``
        Eq. 6 (:func:`bigan_losses`): alternating Adam steps (beta1 = 0.5) for D and for
        E + G, prior N(0, I).
    ``mean_rgb``
        Nothing to train: the encoder is returned.

    Parameters
    ----------
    kind : {"vae", "contrastive", "bigan", "mean_rgb"}
    pool : PatchPool or numpy.ndarray
        Patches (an ``(n, P, P, 3)`` uint8 array counts as a one-source pool).
    code_size, width : int
        C and the trunk width (see :func:`~histoscope.models.nic.create_encoder`).
    epochs : int
        Passes over the pool (each patch is an anchor once per epoch).
    batch_size : int
    lr : float
        Adam learning rate.
    gamma : float
        Weight of the KL term (VAE).
    recon_loss : {"mse", "bce"}
        Reconstruction term of the VAE.
    seed : int
        Same seed, same weights (on CPU with the same torch thread count).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    verbose : bool
        Progress bar.

    Returns
    -------
    (encoder, history)
        The encoder in eval mode (``encoder.config["train"]`` records the settings) and a
        dict of per-epoch lists: ``epoch``, ``loss`` and per-kind terms (``recon``/``kl``;
        ``accuracy`` of the pair head; ``loss_d``/``loss_ge``/``d_real``/``d_fake``),
        plus ``seconds``.
    """
    from tqdm.auto import tqdm

    if not isinstance(pool, PatchPool):
        pool = PatchPool.from_images(np.asarray(pool))
    if kind not in ("mean_rgb", "vae", "contrastive", "bigan"):
        raise ValueError(f"train_encoder trains 'vae', 'contrastive', 'bigan' (or returns 'mean_rgb'), got {kind!r}; "
                         "use train_supervised_encoder for 'supervised'")
    _check_common(epochs, batch_size, lr)
    if len(pool) < 2:
        raise ValueError(f"the patch pool has {len(pool)} patch(es); training needs at least 2")
    if kind == "contrastive" and pool.neighbours is None:
        raise ValueError("contrastive training needs a pool with neighbours: sample_patch_pool(..., neighbours=True)")
    dev = resolve_device(device)
    P = pool.patch
    if kind == "mean_rgb":
        return create_encoder("mean_rgb", patch_size=P, mpp=pool.mpp).eval(), {"epoch": [], "loss": [], "seconds": [0.0]}
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    hist: dict[str, list[float]] = {"epoch": [], "loss": []}
    t0 = time.perf_counter()
    with _seeded(seed, dev):
        enc = create_encoder(kind, code_size=code_size, patch_size=P, mpp=pool.mpp, width=width).to(dev)
        enc.train()
        if kind == "bigan":
            opt_d = torch.optim.Adam(enc.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
            opt = torch.optim.Adam(enc.encoder_parameters(), lr=lr, betas=(0.5, 0.999))
        else:
            opt = torch.optim.Adam(enc.parameters(), lr=lr)
        n_batches = len(_batches(len(pool), batch_size, np.random.default_rng(0), drop_last=True))
        bar = tqdm(total=epochs * n_batches, desc=f"train {kind}", unit="batch", disable=not verbose, leave=False)
        try:
            for epoch in range(epochs):
                sums: dict[str, float] = {}
                count = 0
                for idx in _batches(len(pool), batch_size, rng, drop_last=True):
                    if kind == "vae":
                        x = augment_batch(image_to_tensor(pool.images[idx]).to(dev), rng, heavy=False)
                        recon, mu, logvar = enc.forward_train(x, generator=gen)
                        loss, rec, kl = vae_loss(x, recon, mu, logvar, gamma=gamma, recon_loss=recon_loss)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        stats = {"loss": loss.item(), "recon": rec.item(), "kl": kl.item()}
                    elif kind == "contrastive":
                        pairs = make_pairs(pool, idx, rng)
                        x1 = augment_batch(image_to_tensor(pairs.first).to(dev), rng, heavy=True)
                        x2 = augment_batch(image_to_tensor(pairs.second).to(dev), rng, heavy=True)
                        y = torch.as_tensor(pairs.label, device=dev)
                        logit = enc.forward_pair(x1, x2)
                        loss = F.binary_cross_entropy_with_logits(logit, y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        acc = ((logit.detach() > 0).float() == y).float().mean().item()
                        stats = {"loss": loss.item(), "accuracy": acc}
                    else:  # bigan
                        x = augment_batch(image_to_tensor(pool.images[idx]).to(dev), rng, heavy=False)
                        z = torch.randn((len(idx), enc.code_size), generator=gen, device=dev)
                        # D step: ascend V (eq. 6) with E and G fixed
                        real = enc.discriminate(x, enc.encode(x).detach())
                        fake = enc.discriminate(enc.generate(z).detach(), z)
                        loss_d, _ = bigan_losses(real, fake)
                        opt_d.zero_grad(set_to_none=True)
                        loss_d.backward()
                        opt_d.step()
                        # E, G step against the updated D
                        real = enc.discriminate(x, enc.encode(x))
                        fake = enc.discriminate(enc.generate(z), z)
                        _, loss_ge = bigan_losses(real, fake)
                        opt.zero_grad(set_to_none=True)
                        loss_ge.backward()
                        opt.step()
                        stats = {
                            "loss": loss_ge.item(),
                            "loss_d": loss_d.item(),
                            "loss_ge": loss_ge.item(),
                            "d_real": torch.sigmoid(real.detach()).mean().item(),
                            "d_fake": torch.sigmoid(fake.detach()).mean().item(),
                        }
                    for key, v in stats.items():
                        sums[key] = sums.get(key, 0.0) + v * len(idx)
                    count += len(idx)
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.4g}")
                hist["epoch"].append(epoch)
                for key, v in sums.items():
                    hist.setdefault(key, []).append(v / max(count, 1))
        finally:
            bar.close()
    enc.eval()
    hist["seconds"] = [time.perf_counter() - t0]
    log.info("trained a %s encoder on %d patches for %d epochs in %.1f s (final loss %.4g)", kind, len(pool), epochs, hist["seconds"][0], hist["loss"][-1] if hist["loss"] else float("nan"))
    enc.config["train"] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "n_patches": len(pool),
                           **({"gamma": gamma, "recon_loss": recon_loss} if kind == "vae" else {})}
    return enc, hist


def _check_labelled(images: np.ndarray, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} images must be uint8 (N, P, P, 3), got {arr.dtype} {arr.shape}")
    y = np.asarray(labels)
    if y.shape != (len(arr),):
        raise ValueError(f"{what}: {len(arr)} images but labels of shape {y.shape}")
    return arr, y.astype(np.int64)


def train_supervised_encoder(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    classes: Sequence[str],
    mpp: float | None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    arch: str = "small_cnn",
    width: int = 24,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[SupervisedEncoder, dict[str, list[float]]]:
    """Train a tissue classifier on labelled patches; its pooled features are the ``supervised`` encoder.

    The classifier is a registry model (``small_cnn`` by default, at ``input_size`` = P)
    trained with cross-entropy and Adam, with random rotations/mirrors when ``augment``.

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, P, P, 3)`` uint8.
    labels : array of int
        Class index per image, in ``[0, len(classes))``.
    classes : sequence of str
    mpp : float or None
        Resolution of the patches (recorded in the config).
    epochs, batch_size, lr, seed, device, verbose
        As in :func:`train_encoder`.
    arch : str
        Registry model (``width`` is passed to ``small_cnn`` only).

    Returns
    -------
    (SupervisedEncoder, history)
        History: per-epoch ``loss`` and training ``accuracy``.
    """
    from tqdm.auto import tqdm

    from ..models.registry import create_model

    arr, y = _check_labelled(images, labels, "train_supervised_encoder")
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise ValueError(f"classes must name at least 2 classes, got {classes}")
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"labels must be in [0, {len(classes)}), got range [{y.min()}, {y.max()}]")
    _check_common(epochs, batch_size, lr)
    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    hist: dict[str, list[float]] = {"epoch": [], "loss": [], "accuracy": []}
    t0 = time.perf_counter()
    with _seeded(seed, dev):
        kw = {"width": width} if arch == "small_cnn" else {}
        model = create_model(arch, num_classes=len(classes), classes=classes, input_size=arr.shape[1], mpp=mpp, **kw).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        n_batches = len(_batches(len(arr), batch_size, np.random.default_rng(0), drop_last=True))
        with tqdm(total=epochs * n_batches, desc="train supervised", unit="batch", disable=not verbose, leave=False) as bar:
            for epoch in range(epochs):
                tot, correct, count = 0.0, 0, 0
                for idx in _batches(len(arr), batch_size, rng, drop_last=True):
                    x = image_to_tensor(arr[idx]).to(dev)
                    if augment:
                        x = augment_batch(x, rng, heavy=False)
                    t = torch.as_tensor(y[idx], device=dev)
                    logits = model(x)
                    loss = F.cross_entropy(logits, t)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += loss.item() * len(idx)
                    correct += int((logits.argmax(1) == t).sum())
                    count += len(idx)
                    bar.update(1)
                hist["epoch"].append(epoch)
                hist["loss"].append(tot / max(count, 1))
                hist["accuracy"].append(correct / max(count, 1))
    model.eval()
    enc = SupervisedEncoder(model)
    enc.config["train"] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "n_patches": len(arr)}
    hist["seconds"] = [time.perf_counter() - t0]
    return enc.eval(), hist


def evaluate_encoders(
    encoders: dict[str, PatchEncoder],
    train: tuple[np.ndarray, Sequence[int] | np.ndarray],
    test: tuple[np.ndarray, Sequence[int] | np.ndarray],
    classes: Sequence[str],
    *,
    hidden: tuple[int, ...] = (64,),
    max_iter: int = 500,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> pd.DataFrame:
    """The paper's Table 1 ([1]_ section 4.1): how much each frozen encoder's codes tell about the class.

    Each encoder encodes the train and test patches (in eval mode, no gradients); the
    codes are standardised and a small MLP (:class:`sklearn.neural_network.MLPClassifier`,
    ``hidden`` layers, fixed ``random_state=seed``) is fitted on the train codes and
    scored on the test codes.

    Parameters
    ----------
    encoders : dict of str to PatchEncoder
    train, test : (images, labels)
        ``(N, P, P, 3)`` uint8 patches and class indices.
    classes : sequence of str
        Class names, in label order.

    Returns
    -------
    pandas.DataFrame
        One row per encoder (index: its name) with the accuracy of every class (the
        fraction of that class's test patches classified correctly; columns named by the
        classes), ``accuracy``, ``balanced_accuracy``, ``code_size`` and ``n_test``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not encoders:
        raise ValueError("encoders is empty: give at least one {name: encoder}")
    xtr, ytr = _check_labelled(*train, "train")
    xte, yte = _check_labelled(*test, "test")
    classes = [str(c) for c in classes]
    labels = list(range(len(classes)))
    dev = resolve_device(device)
    rows = []
    for name, enc in encoders.items():
        if not isinstance(enc, PatchEncoder):
            raise TypeError(f"encoder {name!r} is not a PatchEncoder but {type(enc).__name__}")
        enc = enc.to(dev)
        ctr = enc.encode_images(xtr, batch_size=batch_size, device=dev, verbose=verbose)
        cte = enc.encode_images(xte, batch_size=batch_size, device=dev, verbose=verbose)
        clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(ctr, ytr)
        pred = clf.predict(cte)
        per_class = recall_score(yte, pred, labels=labels, average=None, zero_division=np.nan)
        row: dict[str, Any] = {"encoder": name}
        row.update({c: float(v) for c, v in zip(classes, per_class)})
        row.update(
            accuracy=float(accuracy_score(yte, pred)),
            balanced_accuracy=float(balanced_accuracy_score(yte, pred)),
            code_size=enc.code_size,
            n_test=len(yte),
        )
        rows.append(row)
    return pd.DataFrame(rows).set_index("encoder")
