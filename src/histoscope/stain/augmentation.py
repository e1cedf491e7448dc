"""H&E stain augmentation in HED colour space (Tellez et al., appendix B).

Each stain channel ``S_i`` of the deconvolved image (haematoxylin, eosin and the
residual/DAB channel) is perturbed as ``S_i' = alpha_i * S_i + beta_i`` with
``alpha_i ~ U(1 - sigma, 1 + sigma)`` and ``beta_i ~ U(-sigma, sigma)``, and the
image is converted back to RGB.

Because deconvolution and reconstruction are linear in optical density, the whole
operation is one affine map of OD per pixel::

    od' = od @ A + w * b,   A = HED_FROM_RGB @ diag(alpha) @ RGB_FROM_HED,
                            b = beta @ RGB_FROM_HED

(``w`` is 1, or a background weight when white is preserved).  For uint8 input
the numpy implementation never evaluates a logarithm or an exponential per pixel:
``10 ** -od'`` factorises into a product of per-channel lookup tables of the 256
possible intensities.  The torch implementation evaluates the same map on
``(B, 3, H, W)`` float batches with per-sample parameters, on any device.

References
----------
.. [1] D. Tellez et al., "Whole-slide mitosis detection in H&E breast histology
       using PHH3 as a reference to train distilled stain-invariant
       convolutional networks", IEEE TMI 37(9), 2018, appendix B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._kernels import apply_lut_product, lut_tables
from .deconvolution import (
    HED_FROM_RGB,
    I0_DEFAULT,
    NO_BLEND,
    OD_BIAS,
    RGB_FROM_HED,
    _check_tensor_rgb,
    _is_tensor,
    od_lut,
    tissue_weight,
    tissue_weight_lut,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "HEDJitterParams",
    "random_hed_params",
    "hed_jitter",
    "augment_hed",
]

@dataclass(frozen=True, eq=False)
class HEDJitterParams:
    """Parameters of one HED jitter (or one per image of a batch).

    Attributes
    ----------
    alpha : numpy.ndarray
        ``(3,)`` or ``(B, 3)`` multiplicative factors for H, E, DAB/residual.
    beta : numpy.ndarray
        ``(3,)`` or ``(B, 3)`` additive shifts (log10 OD units).
    """

    alpha: np.ndarray
    beta: np.ndarray

    def __post_init__(self) -> None:
        a = np.asarray(self.alpha, dtype=np.float64)
        b = np.asarray(self.beta, dtype=np.float64)
        if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[-1] != 3:
            raise ValueError(
                f"alpha and beta must both have shape (3,) or (B, 3), got {a.shape} and {b.shape}"
            )
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise ValueError("alpha and beta must be finite")
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "beta", b)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HEDJitterParams):
            return NotImplemented
        return np.array_equal(self.alpha, other.alpha) and np.array_equal(self.beta, other.beta)

    def __hash__(self) -> int:
        return hash((self.alpha.shape, self.alpha.tobytes(), self.beta.tobytes()))

    @property
    def batched(self) -> bool:
        """Whether the parameters hold one row per image."""
        return self.alpha.ndim == 2

    def __len__(self) -> int:
        return self.alpha.shape[0] if self.batched else 1

    def __getitem__(self, i: int) -> HEDJitterParams:
        if not self.batched:
            raise IndexError("unbatched parameters cannot be indexed")
        return HEDJitterParams(self.alpha[i], self.beta[i])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists of floats)."""
        return {"alpha": self.alpha.tolist(), "beta": self.beta.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HEDJitterParams:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(d["alpha"]), np.asarray(d["beta"]))


def random_hed_params(
    rng: int | np.random.Generator | None = None,
    *,
    sigma: float = 0.05,
    batch: int | None = None,
) -> HEDJitterParams:
    """Draw HED jitter parameters: ``alpha ~ U(1-sigma, 1+sigma)``, ``beta ~ U(-sigma, sigma)``.

    Parameters
    ----------
    rng : int or numpy.random.Generator, optional
        Seed or generator (fed to :func:`numpy.random.default_rng`).
    sigma : float, optional
        Augmentation strength, >= 0 (0.05 in Tellez et al.).
    batch : int, optional
        Draw ``(batch, 3)`` parameters, one row per image.

    Returns
    -------
    HEDJitterParams
    """
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    gen = np.random.default_rng(rng)
    shape = (3,) if batch is None else (int(batch), 3)
    alpha = gen.uniform(1.0 - sigma, 1.0 + sigma, size=shape)
    beta = gen.uniform(-sigma, sigma, size=shape)
    return HEDJitterParams(alpha, beta)


def _affine(params: HEDJitterParams) -> tuple[np.ndarray, np.ndarray]:
    """The fused OD map ``od @ A + b`` of :mod:`histoscope.stain.augmentation`."""
    alpha = params.alpha
    a = np.einsum("ij,...j,jk->...ik", HED_FROM_RGB, alpha, RGB_FROM_HED)
    b = params.beta @ RGB_FROM_HED
    return a, b


def _jitter_uint8(image: np.ndarray, a: np.ndarray, b: np.ndarray, preserve_white: bool, i0: float) -> np.ndarray:
    """One uint8 HxWx3 image; lookup tables only (no per-pixel log/exp)."""
    lut = od_lut(i0, OD_BIAS)
    # with preserve_white the weight depends only on the darkest channel: w(min I_k)
    weight = tissue_weight_lut() if preserve_white else None
    tables, shift = lut_tables(lut, a, b, i0, weight)
    flat = np.ascontiguousarray(image).reshape(-1, 3)
    out = np.empty_like(flat)
    apply_lut_product(flat, tables, shift, NO_BLEND, OD_BIAS, out)
    return out.reshape(image.shape)


def _jitter_float_np(
    image: np.ndarray, a: np.ndarray, b: np.ndarray, preserve_white: bool, i0: float
) -> np.ndarray:
    od = -np.log10(np.maximum(image * 255.0 + OD_BIAS, 255e-6) / i0)
    od2 = od @ a
    if preserve_white:
        od2 += tissue_weight(image)[..., None] * b
    else:
        od2 += b
    return np.clip((i0 * np.power(10.0, -od2) - OD_BIAS) / 255.0, 0.0, 1.0).astype(image.dtype)


def _jitter_torch(
    image: "torch.Tensor", a: np.ndarray, b: np.ndarray, preserve_white: bool, i0: float
) -> "torch.Tensor":
    import torch

    x = image if image.ndim == 4 else image.unsqueeze(0)
    n = x.shape[0]
    at = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    bt = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    if at.ndim == 2:
        at = at.expand(n, 3, 3)
        bt = bt.expand(n, 3)
    elif at.shape[0] != n:
        raise ValueError(f"parameters for {at.shape[0]} images given for a batch of {n}")
    od = -((x * 255.0 + OD_BIAS).clamp_min(255e-6) / i0).log10()
    od2 = torch.einsum("bchw,bcd->bdhw", od, at)
    shift = bt[:, :, None, None]
    if preserve_white:
        shift = shift * tissue_weight(x)
    out = ((i0 * torch.pow(10.0, -(od2 + shift)) - OD_BIAS) / 255.0).clamp(0.0, 1.0)
    return out if image.ndim == 4 else out[0]


def hed_jitter(
    image: np.ndarray | "torch.Tensor",
    params: HEDJitterParams,
    *,
    preserve_white: bool = False,
    i0: float = I0_DEFAULT,
) -> np.ndarray | "torch.Tensor":
    """Apply given HED jitter parameters (the deterministic, replayable kernel).

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor
        numpy: ``(H, W, 3)`` or ``(N, H, W, 3)``, uint8 (fast path, uint8 out) or
        float in [0, 1] (float out).  torch: ``(3, H, W)`` or ``(B, 3, H, W)`` float
        in [0, 1] on any device (float out, same device).
    params : HEDJitterParams
        ``(3,)`` parameters (the same for every image) or ``(N, 3)``, one row per
        image of a batch.
    preserve_white : bool, optional
        Keep glass white: fade the additive shift ``beta`` out on background
        pixels (see :func:`~histoscope.stain.deconvolution.tissue_weight`).
    i0 : float, optional
        Incident light intensity of the OD conversion.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The augmented image(s), same shape, dtype and device as ``image``.

    Raises
    ------
    ValueError
        If shapes of image and parameters do not fit.
    """
    if not isinstance(params, HEDJitterParams):
        raise TypeError(f"params must be HEDJitterParams, got {type(params).__name__}")
    a, b = _affine(params)
    if _is_tensor(image):
        _check_tensor_rgb(image)
        return _jitter_torch(image, a, b, preserve_white, float(i0))
    arr = np.asarray(image)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3) or (N, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"image must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    kernel = _jitter_uint8 if arr.dtype == np.uint8 else _jitter_float_np
    if params.batched:
        if arr.ndim != 4 or arr.shape[0] != len(params):
            raise ValueError(
                f"{len(params)} parameter rows need an (N={len(params)}, H, W, 3) batch, got {arr.shape}"
            )
        if len(arr) > 1:  # the kernels release the GIL: threads over the images of the batch
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(arr), os.cpu_count() or 1)) as pool:
                outs = list(pool.map(lambda i: kernel(arr[i], a[i], b[i], preserve_white, float(i0)), range(len(arr))))
            return np.stack(outs)
        return np.stack([kernel(arr[0], a[0], b[0], preserve_white, float(i0))])
    return kernel(arr, a, b, preserve_white, float(i0))


def augment_hed(
    image: np.ndarray | "torch.Tensor",
    *,
    sigma: float = 0.05,
    rng: int | np.random.Generator | None = None,
    preserve_white: bool = False,
    return_params: bool = False,
) -> Any:
    """Random H&E stain augmentation (Tellez et al., appendix B).

    Draws ``alpha ~ U(1 - sigma, 1 + sigma)`` and ``beta ~ U(-sigma, sigma)`` per
    stain channel (independently per image of a batch) and applies
    :func:`hed_jitter`.

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor
        As in :func:`hed_jitter`; uint8 in, uint8 out on the numpy side.
    sigma : float, optional
        Strength (0.05 in the paper).
    rng : int or numpy.random.Generator, optional
        Seed or generator; the same seed gives the same output.
    preserve_white : bool, optional
        Keep glass background white.
    return_params : bool, optional
        Also return the :class:`HEDJitterParams` drawn, to replay with
        :func:`hed_jitter`.

    Returns
    -------
    numpy.ndarray or torch.Tensor, or (image, HEDJitterParams)

    Examples
    --------
    >>> from skimage import data
    >>> from histoscope.stain import augment_hed, hed_jitter
    >>> tile = data.immunohistochemistry()[:64, :64]
    >>> out, params = augment_hed(tile, rng=0, return_params=True)
    >>> bool((hed_jitter(tile, params) == out).all())
    True
    """
    if _is_tensor(image):
        batch = image.shape[0] if image.ndim == 4 else None
    else:
        arr = np.asarray(image)
        batch = arr.shape[0] if arr.ndim == 4 else None
    params = random_hed_params(rng, sigma=sigma, batch=batch)
    out = hed_jitter(image, params, preserve_white=preserve_white)
    return (out, params) if return_params else out
