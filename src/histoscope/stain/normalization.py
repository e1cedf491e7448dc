"""Stain normalisation: Macenko and Reinhard, numpy and torch backends, batched.

Both normalisers follow the ``fit(target)`` / ``transform(images)`` pattern and
never crash on tiles the popular libraries fail on (all white, almost no tissue,
a few pixels): background is masked before estimating anything, and when too
little tissue remains the estimate falls back to the reference (with a
:class:`~histoscope.exceptions.StainWarning` that says why), so a white tile comes
back white.

numpy backend: ``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 (float in [0, 1] is
quantised to uint8), or a list of such images of different sizes; output uint8.
It runs compiled lookup-table kernels (see :mod:`histoscope.stain._kernels`).
torch backend: ``(3, H, W)`` or ``(B, 3, H, W)`` float in [0, 1] on any device;
the whole batch is estimated at once; output float in [0, 1].

References
----------
.. [1] M. Macenko et al., "A method for normalizing histology slides for
       quantitative analysis", ISBI 2009.
.. [2] E. Reinhard, M. Ashikhmin, B. Gooch and P. Shirley, "Color transfer
       between images", IEEE Computer Graphics and Applications 21(5), 2001.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..exceptions import StainWarning
from ._kernels import apply_lut_product, lut_tables, od_moments, od_projection, percentiles
from .deconvolution import (
    MACENKO_REFERENCE_HE,
    MACENKO_REFERENCE_MAX_CONC,
    NO_BLEND,
    OD_BIAS,
    _check_tensor_rgb,
    _is_tensor,
    od_lut,
    tissue_weight,
    tissue_weight_lut,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "MacenkoStains",
    "macenko_stains",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "get_normalizer",
    "NORMALIZERS",
]

Backend = Literal["numpy", "torch"]
NormalizerName = Literal["macenko", "reinhard"]

#: Background threshold of Macenko et al.: 0.15 in natural-log OD, here in log10 OD.
MACENKO_BETA = 0.15 / np.log(10.0)
#: Incident light intensity used by Macenko et al. (and torchstain).
MACENKO_I0 = 240.0


@dataclass(frozen=True, eq=False)
class MacenkoStains:
    """Stain estimate of one image.

    Attributes
    ----------
    he : numpy.ndarray
        ``(3, 2)`` unit H and E optical-density vectors (columns).
    max_conc : numpy.ndarray
        ``(2,)`` 99th percentile of the H and E concentrations (log10 OD).
    tissue_pixels : int
        Pixels that passed the background mask.
    fallback : str or None
        Why the reference was used instead of the estimate, or None.
    """

    he: np.ndarray
    max_conc: np.ndarray
    tissue_pixels: int
    fallback: str | None = None


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #


def _to_uint8(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    raise TypeError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def _as_image_list(images: Any) -> tuple[list[np.ndarray], str]:
    """numpy input -> list of HxWx3 uint8 and the form to return ('single'|'stack'|'list')."""
    if isinstance(images, (list, tuple)):
        return [_to_uint8(im, f"image {i}") for i, im in enumerate(images)], "list"
    arr = np.asarray(images)
    if arr.ndim == 4:
        return [_to_uint8(im, f"image {i}") for i, im in enumerate(arr)], "stack"
    if arr.ndim == 3:
        return [_to_uint8(arr)], "single"
    raise ValueError(f"expected (H, W, 3), (N, H, W, 3) or a list of images, got shape {arr.shape}")


def _pack(outputs: list[np.ndarray], form: str) -> Any:
    if form == "single":
        return outputs[0]
    if form == "stack":
        return np.stack(outputs)
    return outputs


def _warn(message: str, stacklevel: int = 4) -> None:
    """Warn with a StainWarning attributed to the user's line (``stacklevel`` counts from here)."""
    warnings.warn(message, StainWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------- #
# Macenko: estimate (numpy)
# --------------------------------------------------------------------------- #


def _order_he(v_min: np.ndarray, v_max: np.ndarray) -> np.ndarray:
    """Macenko's heuristic: haematoxylin has the larger red OD; vectors made non-negative."""
    he = np.stack([v_min, v_max], axis=1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], axis=1)
    he = he * np.where(he.sum(axis=0) < 0, -1.0, 1.0)
    return he / np.linalg.norm(he, axis=0)


_Q99 = np.array([99.0])


def _max_conc(conc: np.ndarray) -> np.ndarray:
    return np.array([percentiles(row, _Q99)[0] for row in conc])


def macenko_stains(
    image: np.ndarray,
    *,
    i0: float = MACENKO_I0,
    alpha: float = 1.0,
    beta: float = MACENKO_BETA,
    min_tissue_pixels: int = 1000,
    reference: MacenkoStains | None = None,
) -> MacenkoStains:
    """Estimate the H and E stain vectors of one image (Macenko et al. 2009).

    Pixels with an optical density below ``beta`` in any channel are background.
    The OD of the remaining pixels is projected on the plane of the two largest
    eigenvectors of its covariance; the stain vectors are the directions at the
    ``alpha`` and ``100 - alpha`` percentiles of the angle in that plane.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 (float in [0, 1] is quantised).
    i0 : float, optional
        Incident light intensity (240 as in Macenko et al.).
    alpha : float, optional
        Angle percentile, in (0, 50).
    beta : float, optional
        Background OD threshold (log10 units; 0.15 natural-log units by default).
    min_tissue_pixels : int, optional
        Fewer tissue pixels than this use the reference vectors (with a warning).
    reference : MacenkoStains, optional
        What to fall back to (default: Macenko's reference vectors).

    Returns
    -------
    MacenkoStains
    """
    img = _to_uint8(image)
    if not 0 < alpha < 50:
        raise ValueError(f"alpha must be in (0, 50), got {alpha!r}")
    ref_he = MACENKO_REFERENCE_HE if reference is None else reference.he
    lut = od_lut(float(i0), OD_BIAS).astype(np.float64)
    flat = np.ascontiguousarray(img).reshape(-1, 3)
    count, s, ss = od_moments(flat, lut, float(beta))
    fallback = None
    he = ref_he
    if count < max(int(min_tissue_pixels), 3):
        fallback = f"only {count} tissue pixels (need {int(min_tissue_pixels)})"
    else:
        cov = (ss - np.outer(s, s) / count) / (count - 1)
        _, vecs = np.linalg.eigh(cov)
        v = vecs[:, 1:3].copy()
        v[:, 1] *= np.sign(v[:, 1].sum()) or 1.0  # largest eigenvector into positive OD
        phi, _ = od_projection(flat, lut, float(beta), v, np.empty((0, 3)))
        lo, hi = percentiles(phi, np.array([alpha, 100.0 - alpha]))
        v_min = v @ np.array([np.cos(lo), np.sin(lo)])
        v_max = v @ np.array([np.cos(hi), np.sin(hi)])
        cand = _order_he(v_min, v_max)
        if abs(float(cand[:, 0] @ cand[:, 1])) > 0.999:
            fallback = "the tissue colours span a single direction (H and E vectors coincide)"
        else:
            he = cand
    pinv = np.linalg.pinv(he)
    _, conc = od_projection(flat, lut, float(beta), np.zeros((3, 2)), pinv)
    max_conc = _max_conc(conc)
    if fallback is None and not np.all(max_conc > 1e-3):
        fallback = f"stain concentrations are ~0 (99th percentiles {max_conc.round(4).tolist()})"
    if fallback is not None:
        # too little to estimate: report the reference; _macenko_map then keeps the
        # image's concentrations as they are (scale 1), so a pale tile stays pale
        max_conc = (MACENKO_REFERENCE_MAX_CONC if reference is None else reference.max_conc).copy()
    return MacenkoStains(np.asarray(he, dtype=np.float64), max_conc, int(count), fallback)


def _macenko_map(src: MacenkoStains, tgt: MacenkoStains) -> np.ndarray:
    """3x3 OD map (row vectors): od' = od @ M, M = pinv(HE_s).T diag(maxC_t / maxC_s) HE_t.T.

    After a fallback (no reliable estimate) the concentrations are kept (scale 1)
    and only the stain vectors change.
    """
    scale = np.ones(2) if src.fallback is not None else tgt.max_conc / src.max_conc
    return np.linalg.pinv(src.he).T @ np.diag(scale) @ tgt.he.T


# --------------------------------------------------------------------------- #
# Macenko: torch (batched)
# --------------------------------------------------------------------------- #


def _macenko_torch(
    x: "torch.Tensor",
    target: MacenkoStains,
    *,
    i0: float,
    alpha: float,
    beta: float,
    min_tissue_pixels: int,
    preserve_white: bool,
) -> tuple["torch.Tensor", list[MacenkoStains]]:
    import torch

    b, _, h, w = x.shape
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    od = -((x.to(dt) * 255.0 + OD_BIAS).clamp_min(255e-6) / i0).log10().reshape(b, 3, h * w)
    mask = (od >= beta).all(dim=1)  # (B, N)
    count = mask.sum(dim=1)  # (B,)
    odm = od * mask[:, None, :]
    s = odm.sum(dim=2)  # (B, 3)
    ss = torch.einsum("bcn,bdn->bcd", odm, od)
    n = count.clamp_min(2).to(dt)[:, None, None]
    cov = (ss - s[:, :, None] * s[:, None, :] / n) / (n - 1)
    cov = cov + torch.eye(3, dtype=dt, device=x.device) * 1e-12
    _, vecs = torch.linalg.eigh(cov.double())
    v = vecs[:, :, 1:3].to(dt).clone()
    sign = torch.sign(v[:, :, 1].sum(dim=1))
    v[:, :, 1] *= torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    proj = torch.einsum("bcn,bck->bkn", od, v)
    phi = torch.atan2(proj[:, 1], proj[:, 0]).masked_fill(~mask, float("nan"))
    q = torch.tensor([alpha / 100.0, 1.0 - alpha / 100.0], dtype=dt, device=x.device)
    ang = torch.nanquantile(phi, q, dim=1)  # (2, B)
    ang = torch.nan_to_num(ang)
    dirs = torch.stack([ang.cos(), ang.sin()], dim=-1)  # (2, B, 2)
    v_min = torch.einsum("bck,bk->bc", v, dirs[0])
    v_max = torch.einsum("bck,bk->bc", v, dirs[1])
    first = torch.where((v_min[:, 0] > v_max[:, 0])[:, None], v_min, v_max)
    second = torch.where((v_min[:, 0] > v_max[:, 0])[:, None], v_max, v_min)
    he = torch.stack([first, second], dim=2)  # (B, 3, 2)
    he = he * torch.where(he.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    he = he / he.norm(dim=1, keepdim=True).clamp_min(1e-12)

    ref_he = torch.as_tensor(MACENKO_REFERENCE_HE, dtype=dt, device=x.device)
    too_few = count < max(int(min_tissue_pixels), 3)
    coincide = (he[:, :, 0] * he[:, :, 1]).sum(dim=1).abs() > 0.999
    use_ref = too_few | coincide
    he = torch.where(use_ref[:, None, None], ref_he.expand_as(he), he)
    pinv = torch.linalg.pinv(he.double()).to(dt)  # (B, 2, 3)
    conc = torch.einsum("bkc,bcn->bkn", pinv, od)
    max_conc = torch.quantile(conc, 0.99, dim=2)  # (B, 2)
    ref_max = torch.as_tensor(MACENKO_REFERENCE_MAX_CONC, dtype=dt, device=x.device)
    empty = ~(max_conc > 1e-3).all(dim=1)
    use_ref = use_ref | empty
    max_conc = torch.where(use_ref[:, None], ref_max.expand_as(max_conc), max_conc)

    tgt_he = torch.as_tensor(target.he, dtype=dt, device=x.device)
    tgt_max = torch.as_tensor(target.max_conc, dtype=dt, device=x.device)
    scale = torch.where(use_ref[:, None], torch.ones_like(max_conc), tgt_max / max_conc)  # see _macenko_map
    m = torch.einsum("bkc,bk,dk->bcd", pinv, scale, tgt_he)  # (B, 3, 3)
    od2 = torch.einsum("bcn,bcd->bdn", od, m)
    out = ((i0 * torch.pow(10.0, -od2) - OD_BIAS) / 255.0).reshape(b, 3, h, w)
    if preserve_white:
        q = (x.to(dt) * 255.0).round() / 255.0
        wt = tissue_weight(q)
        out = wt * out + (1.0 - wt) * x.to(dt)
    out = out.clamp(0.0, 1.0)

    he_np = he.detach().cpu().double().numpy()
    mc_np = max_conc.detach().cpu().double().numpy()
    cnt = count.cpu().numpy()
    reasons = []
    for i in range(b):
        if bool(too_few[i]):
            reasons.append(f"only {int(cnt[i])} tissue pixels (need {int(min_tissue_pixels)})")
        elif bool(coincide[i]):
            reasons.append("the tissue colours span a single direction (H and E vectors coincide)")
        elif bool(empty[i]):
            reasons.append("stain concentrations are ~0")
        else:
            reasons.append(None)
    stains = [MacenkoStains(he_np[i], mc_np[i], int(cnt[i]), reasons[i]) for i in range(b)]
    return out.to(x.dtype), stains


# --------------------------------------------------------------------------- #
# normalisers
# --------------------------------------------------------------------------- #


class _Normalizer:
    """Shared plumbing: backend/device checks, fit state, numpy batching."""

    name = "base"

    def __init__(self, *, backend: Backend = "numpy", device: str = "cpu", workers: int = 2) -> None:
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.backend = backend
        self.device = device
        self.workers = int(workers)
        self._fitted = False

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(target) first")

    def _torch_input(self, images: Any) -> tuple["torch.Tensor", bool]:
        import torch

        if not isinstance(images, torch.Tensor):
            raise TypeError(
                f"the torch backend takes a (B, 3, H, W) float tensor, got {type(images).__name__}; "
                "convert with histoscope.utils.convert.image_to_tensor"
            )
        _check_tensor_rgb(images, "images")
        dev = _resolve_device(self.device)
        x = images.to(dev)
        return (x if x.ndim == 4 else x[None]), images.ndim == 3

    def _map_numpy(self, images: Any, one: Any) -> tuple[Any, list[Any]]:
        """Apply ``one(img) -> (out, estimate)`` to every image, in order; threads over images."""
        imgs, form = _as_image_list(images)
        if len(imgs) > 1 and self.workers > 1:
            with ThreadPoolExecutor(min(self.workers, len(imgs))) as pool:
                pairs = list(pool.map(one, imgs))
        else:
            pairs = [one(im) for im in imgs]
        return _pack([p[0] for p in pairs], form), [p[1] for p in pairs]

    def fit_transform(self, target: Any, images: Any) -> Any:
        """``fit(target)`` then ``transform(images)``."""
        return self.fit(target).transform(images)

    def fit(self, target: Any) -> "_Normalizer":  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, images: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class MacenkoNormalizer(_Normalizer):
    """Macenko stain normalisation: map each image's H and E onto a target's.

    Parameters
    ----------
    backend : {"numpy", "torch"}, optional
        numpy (uint8 HxWx3 images, compiled kernels, threads over images) or
        torch (``(B, 3, H, W)`` float batches, estimated all at once, CPU or GPU).
    device : str, optional
        torch backend: ``"cpu"``, ``"cuda"``, ``"auto"``.
    i0, alpha, beta : float, optional
        Incident intensity, angle percentile and background OD threshold
        (Macenko et al.'s 240, 1 and 0.15 natural-log units).
    min_tissue_pixels : int, optional
        Images with fewer tissue pixels keep the reference vectors (warned).
    preserve_white : bool, optional
        Leave glass as it is (fade the normalisation out on background, see
        :func:`~histoscope.stain.deconvolution.tissue_weight`); False maps every
        pixel as Macenko et al. and torchstain do (glass becomes about ``i0``).
    workers : int, optional
        numpy backend: threads over the images of a batch.

    Attributes
    ----------
    target_ : MacenkoStains
        The fitted target (Macenko's reference until :meth:`fit` is called).

    Examples
    --------
    >>> import numpy as np
    >>> from histoscope.stain import MacenkoNormalizer
    >>> norm = MacenkoNormalizer()
    >>> white = np.full((64, 64, 3), 255, np.uint8)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     out = norm.fit(white).transform(white)
    >>> int(out.min())
    255
    """

    name = "macenko"

    def __init__(
        self,
        *,
        backend: Backend = "numpy",
        device: str = "cpu",
        i0: float = MACENKO_I0,
        alpha: float = 1.0,
        beta: float = MACENKO_BETA,
        min_tissue_pixels: int = 1000,
        preserve_white: bool = True,
        workers: int = 2,
    ) -> None:
        super().__init__(backend=backend, device=device, workers=workers)
        self.preserve_white = bool(preserve_white)
        if not 0 < alpha < 50:
            raise ValueError(f"alpha must be in (0, 50), got {alpha!r}")
        if not (np.isfinite(i0) and i0 > 0):
            raise ValueError(f"i0 must be a positive intensity, got {i0!r}")
        self.i0 = float(i0)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.target_ = MacenkoStains(MACENKO_REFERENCE_HE.copy(), MACENKO_REFERENCE_MAX_CONC.copy(), 0)
        self.last_stains_: list[MacenkoStains] = []

    def _estimate(self, image: np.ndarray) -> MacenkoStains:
        return macenko_stains(
            image,
            i0=self.i0,
            alpha=self.alpha,
            beta=self.beta,
            min_tissue_pixels=self.min_tissue_pixels,
        )

    def fit(self, target: Any) -> "MacenkoNormalizer":
        """Estimate the target's stain vectors and concentrations.

        Parameters
        ----------
        target : numpy.ndarray or torch.Tensor
            One image (HxWx3 uint8, or a (3, H, W) tensor for either backend).

        Returns
        -------
        MacenkoNormalizer
            ``self``.
        """
        if _is_tensor(target):
            from ..utils.convert import tensor_to_image

            if target.ndim == 4:
                if target.shape[0] != 1:
                    raise ValueError(f"fit takes one target image, got a batch of {target.shape[0]}")
                target = target[0]
            target = tensor_to_image(target)
        est = self._estimate(target)
        if est.fallback is not None:
            _warn(f"Macenko target: {est.fallback}; using the reference stain vectors", stacklevel=3)
        self.target_ = est
        self._fitted = True
        return self

    def fit_reference(self) -> "MacenkoNormalizer":
        """Use Macenko et al.'s reference stain vectors and concentrations as the target."""
        self.target_ = MacenkoStains(MACENKO_REFERENCE_HE.copy(), MACENKO_REFERENCE_MAX_CONC.copy(), 0)
        self._fitted = True
        return self

    def stains(self, image: Any) -> MacenkoStains:
        """Estimate the stain vectors of one image (no warning; see ``fallback``)."""
        return self._estimate(image)

    def transform(self, images: Any) -> Any:
        """Normalise images to the fitted target.

        Parameters
        ----------
        images : numpy.ndarray, list of numpy.ndarray, or torch.Tensor
            numpy backend: ``(H, W, 3)``, ``(N, H, W, 3)`` or a list; torch
            backend: ``(3, H, W)`` or ``(B, 3, H, W)`` float in [0, 1].

        Returns
        -------
        Same form as ``images`` (uint8 for numpy, float for torch).  The
        estimate of each image is kept in ``last_stains_``.
        """
        self._check_fitted()
        if self.backend == "torch":
            x, single = self._torch_input(images)
            out, stains = _macenko_torch(
                x,
                self.target_,
                i0=self.i0,
                alpha=self.alpha,
                beta=self.beta,
                min_tissue_pixels=self.min_tissue_pixels,
                preserve_white=self.preserve_white,
            )
            self._report(stains)
            return out[0] if single else out
        def one(img: np.ndarray) -> tuple[np.ndarray, MacenkoStains]:
            est = self._estimate(img)
            tables, shift = lut_tables(od_lut(self.i0, OD_BIAS), _macenko_map(est, self.target_), None, self.i0, None)
            flat = np.ascontiguousarray(img).reshape(-1, 3)
            out = np.empty_like(flat)
            blend = tissue_weight_lut().astype(np.float32) if self.preserve_white else NO_BLEND
            apply_lut_product(flat, tables, shift, blend, OD_BIAS, out)
            return out.reshape(img.shape), est

        out, results = self._map_numpy(images, one)
        self._report(results)
        return out

    def _report(self, stains: Sequence[MacenkoStains]) -> None:
        self.last_stains_ = list(stains)
        bad = [(i, s.fallback) for i, s in enumerate(stains) if s.fallback is not None]
        if bad:
            i, why = bad[0]
            more = f" (and {len(bad) - 1} more images)" if len(bad) > 1 else ""
            _warn(f"Macenko: image {i}: {why}{more}; used the reference stain vectors")


# --------------------------------------------------------------------------- #
# Reinhard
# --------------------------------------------------------------------------- #

# Reinhard et al. (2001): RGB -> LMS (eq. 4), log10, LMS -> l-alpha-beta (eq. 6).
_RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=float
)
_LMS_FLOOR = 1e-4


def rgb_to_lab_reinhard(rgb: np.ndarray) -> np.ndarray:
    """Reinhard's l-alpha-beta space (eq. 4-6) of float RGB in [0, 1], ``(..., 3)``."""
    lms = np.log10(np.maximum(rgb @ _RGB_TO_LMS.T, _LMS_FLOOR))
    return lms @ _LMS_TO_LAB.T


def lab_reinhard_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_lab_reinhard` (float RGB, unclipped)."""
    lms = np.power(10.0, lab @ np.linalg.inv(_LMS_TO_LAB).T)
    return lms @ np.linalg.inv(_RGB_TO_LMS).T


@dataclass(frozen=True, eq=False)
class ReinhardStats:
    """Mean and standard deviation of tissue pixels in l-alpha-beta space."""

    mean: np.ndarray
    std: np.ndarray
    tissue_pixels: int
    fallback: str | None = None


class ReinhardNormalizer(_Normalizer):
    """Reinhard colour transfer restricted to tissue.

    Statistics (mean, standard deviation per l-alpha-beta channel) are computed
    on tissue pixels only (see :func:`~histoscope.stain.deconvolution.tissue_weight`);
    the transfer is faded out on glass so the background stays white.

    Parameters
    ----------
    backend : {"numpy", "torch"}, optional
        As in :class:`MacenkoNormalizer`.
    device : str, optional
        torch backend device.
    min_tissue_pixels : int, optional
        Fewer tissue pixels leave the image unchanged (warned).
    workers : int, optional
        numpy backend: threads over images.
    """

    name = "reinhard"

    def __init__(
        self, *, backend: Backend = "numpy", device: str = "cpu", min_tissue_pixels: int = 1000, workers: int = 2
    ) -> None:
        super().__init__(backend=backend, device=device, workers=workers)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.target_: ReinhardStats | None = None

    def stats(self, image: Any) -> ReinhardStats:
        """Tissue statistics of one image."""
        img = _to_uint8(image)
        tissue = tissue_weight(img) >= 1.0
        n = int(tissue.sum())
        if n < max(self.min_tissue_pixels, 2):
            return ReinhardStats(np.zeros(3), np.ones(3), n, f"only {n} tissue pixels (need {self.min_tissue_pixels})")
        lab = rgb_to_lab_reinhard(img[tissue].astype(np.float64) / 255.0)
        std = lab.std(axis=0)
        if not np.all(std > 1e-6):
            return ReinhardStats(lab.mean(axis=0), np.ones(3), n, "tissue colour is uniform (zero spread)")
        return ReinhardStats(lab.mean(axis=0), std, n)

    def fit(self, target: Any) -> "ReinhardNormalizer":
        """Compute the target's tissue statistics.  Returns ``self``."""
        if _is_tensor(target):
            from ..utils.convert import tensor_to_image

            target = tensor_to_image(target[0] if target.ndim == 4 else target)
        st = self.stats(target)
        if st.fallback is not None:
            raise ValueError(f"cannot fit Reinhard to this target: {st.fallback}")
        self.target_ = st
        self._fitted = True
        return self

    def _one(self, img: np.ndarray) -> tuple[np.ndarray, ReinhardStats]:
        assert self.target_ is not None
        st = self.stats(img)
        if st.fallback is not None:
            return img.copy(), st
        lab = rgb_to_lab_reinhard(img.astype(np.float64) / 255.0)
        lab = (lab - st.mean) / st.std * self.target_.std + self.target_.mean
        rgb = lab_reinhard_to_rgb(lab) * 255.0
        w = tissue_weight(img)[..., None]
        out = w * rgb + (1.0 - w) * img
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), st

    def transform(self, images: Any) -> Any:
        """Map each image's tissue statistics onto the target's (same form as input)."""
        self._check_fitted()
        if self.backend == "torch":
            x, single = self._torch_input(images)
            out, results = _reinhard_torch(x, self.target_, self.min_tissue_pixels)
            self._report(results)
            return out[0] if single else out
        out, results = self._map_numpy(images, self._one)
        self._report(results)
        return out

    def _report(self, stats: Sequence[ReinhardStats]) -> None:
        bad = [(i, s.fallback) for i, s in enumerate(stats) if s.fallback is not None]
        if bad:
            i, why = bad[0]
            more = f" (and {len(bad) - 1} more images)" if len(bad) > 1 else ""
            _warn(f"Reinhard: image {i}: {why}{more}; left unchanged")


def _reinhard_torch(
    x: "torch.Tensor", target: ReinhardStats, min_tissue_pixels: int
) -> tuple["torch.Tensor", list[ReinhardStats]]:
    """Batched Reinhard transfer of (B, 3, H, W) float images (same maths as the numpy path)."""
    import torch

    b = x.shape[0]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dev = x.device
    q = (x.to(dt) * 255.0).round() / 255.0  # the 8-bit values the numpy path sees
    flat = q.reshape(b, 3, -1)
    t = lambda a: torch.as_tensor(a, dtype=dt, device=dev)  # noqa: E731
    w = tissue_weight(q).reshape(b, -1)  # (B, N)
    tissue = w >= 1.0
    lms = torch.einsum("dc,bcn->bdn", t(_RGB_TO_LMS), flat).clamp_min(_LMS_FLOOR).log10()
    lab = torch.einsum("ed,bdn->ben", t(_LMS_TO_LAB), lms)
    n = tissue.sum(dim=1)
    nf = n.clamp_min(1).to(dt)[:, None]
    mean = (lab * tissue[:, None]).sum(dim=2) / nf
    var = (((lab - mean[:, :, None]) ** 2) * tissue[:, None]).sum(dim=2) / nf
    std = var.sqrt()
    too_few = n < max(min_tissue_pixels, 2)
    flat_std = ~(std > 1e-6).all(dim=1)
    keep = too_few | flat_std
    std = torch.where(keep[:, None], torch.ones_like(std), std)
    lab2 = (lab - mean[:, :, None]) / std[:, :, None] * t(target.std)[None, :, None] + t(target.mean)[None, :, None]
    lms2 = torch.pow(10.0, torch.einsum("ed,bdn->ben", t(np.linalg.inv(_LMS_TO_LAB)), lab2))
    rgb = torch.einsum("dc,bcn->bdn", t(np.linalg.inv(_RGB_TO_LMS)), lms2)
    out = w[:, None] * rgb + (1.0 - w[:, None]) * flat
    out = torch.where(keep[:, None, None], flat, out).clamp(0.0, 1.0)
    stats = []
    m_np, s_np, n_np = mean.cpu().double().numpy(), std.cpu().double().numpy(), n.cpu().numpy()
    for i in range(b):
        why = None
        if bool(too_few[i]):
            why = f"only {int(n_np[i])} tissue pixels (need {min_tissue_pixels})"
        elif bool(flat_std[i]):
            why = "tissue colour is uniform (zero spread)"
        stats.append(ReinhardStats(m_np[i], s_np[i], int(n_np[i]), why))
    return out.reshape(x.shape).to(x.dtype), stats


NORMALIZERS: dict[str, type[_Normalizer]] = {
    "macenko": MacenkoNormalizer,
    "reinhard": ReinhardNormalizer,
}


def get_normalizer(name: str, **kwargs: Any) -> _Normalizer:
    """Create a stain normaliser by name (``"macenko"`` or ``"reinhard"``).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones).
    """
    try:
        cls = NORMALIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown stain normaliser {name!r}; choose one of {sorted(NORMALIZERS)}") from None
    return cls(**kwargs)
