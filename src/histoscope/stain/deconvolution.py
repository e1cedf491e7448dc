"""Colour deconvolution: optical density and stain (H, E, DAB) spaces.

This module is the one place in histoscope that knows the stain matrices and the
optical-density convention; augmentation and normalisation build on it.

Conventions
-----------
* Optical density (OD) of a channel with intensity ``I`` (0..255) is, after
  Ruifrok & Johnston (2001), appendix equations 2-7, with the epsilon bias of
  one intensity level that keeps black pixels finite::

      OD = -log10((I + 1) / I0)          I = I0 * 10 ** -OD - 1

  ``I0`` is the intensity of the incident light (255 by default; Macenko et al.
  use 240).  Float images in [0, 1] are read as ``I = 255 * x``.
* Stain vectors are rows of a 3x3 matrix, each normalised to unit length, in
  (R, G, B) OD order.  With ``od`` the ``(..., 3)`` OD of a pixel, the stain
  concentrations are ``od @ inv(M)`` and ``od = stains @ M`` (the same row-vector
  convention as :func:`skimage.color.separate_stains`).
* Nothing is clamped: negative concentrations (pixels off the stain plane) are
  kept, so ``hed_to_rgb(rgb_to_hed(x))`` returns ``x`` (within float rounding).
  scikit-image's ``rgb2hed`` clamps them to zero, which makes its round trip lossy.

Relation to scikit-image: ``skimage.color.rgb2hed(x) * 6`` equals the
concentrations of ``rgb_to_stains(x, inv(skimage.color.rgb_from_hed), bias=0)``
wherever scikit-image does not clamp (its OD is ``ln(I) / ln(1e-6)``, i.e.
log10-OD divided by 6, with no bias and unnormalised stain vectors).

Both numpy arrays (``(..., 3)`` channels-last, ``uint8`` or float in [0, 1]) and
torch tensors (``(3, H, W)`` or ``(B, 3, H, W)`` float in [0, 1], any device) are
accepted; the output keeps the layout and library of the input.

References
----------
.. [1] A. C. Ruifrok and D. A. Johnston, "Quantification of histochemical
       staining by color deconvolution", Analytical and Quantitative Cytology
       and Histology 23(4), 291-299, 2001.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "RGB_FROM_HED",
    "HED_FROM_RGB",
    "RGB_FROM_HDX",
    "HDX_FROM_RGB",
    "MACENKO_REFERENCE_HE",
    "MACENKO_REFERENCE_MAX_CONC",
    "stain_matrix",
    "rgb_to_od",
    "od_to_rgb",
    "rgb_to_stains",
    "stains_to_rgb",
    "rgb_to_hed",
    "hed_to_rgb",
    "rgb_to_dab",
    "tissue_weight",
    "WHITE_RAMP",
]

Image = Union[np.ndarray, "torch.Tensor"]

#: Intensity of the incident light used by default (8-bit white).
I0_DEFAULT = 255.0
#: The epsilon bias (in intensity levels) added before taking the logarithm.
OD_BIAS = 1.0


def stain_matrix(*vectors: Any) -> np.ndarray:
    """Build a 3x3 stain matrix from two or three stain OD vectors.

    Each vector is normalised to unit length.  With two vectors the third row is
    their normalised cross product (the "residual" channel of Ruifrok &
    Johnston), so the matrix is always invertible for two distinct stains.

    Parameters
    ----------
    *vectors : array_like
        Two or three length-3 (R, G, B) optical-density vectors.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64 matrix, one unit stain vector per row.

    Raises
    ------
    ValueError
        If the number or shape of the vectors is wrong, a vector is zero or not
        finite, or the vectors are linearly dependent.
    """
    if len(vectors) not in (2, 3):
        raise ValueError(f"expected 2 or 3 stain vectors, got {len(vectors)}")
    rows = []
    for i, v in enumerate(vectors):
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (3,):
            raise ValueError(f"stain vector {i} must have shape (3,), got {a.shape}")
        n = float(np.linalg.norm(a))
        if not np.isfinite(n) or n == 0:
            raise ValueError(f"stain vector {i} must be finite and non-zero, got {a.tolist()}")
        rows.append(a / n)
    if len(rows) == 2:
        third = np.cross(rows[0], rows[1])
        n = float(np.linalg.norm(third))
        if n < 1e-8:
            raise ValueError("the two stain vectors are parallel")
        rows.append(third / n)
    m = np.stack(rows)
    if abs(np.linalg.det(m)) < 1e-8:
        raise ValueError(f"stain vectors are linearly dependent: {m.round(4).tolist()}")
    return m


#: Haematoxylin, eosin and DAB optical-density vectors of Ruifrok & Johnston
#: (2001), table 1, each normalised to unit length (one row per stain).
RGB_FROM_HED = stain_matrix([0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78])
#: Inverse of :data:`RGB_FROM_HED`: OD (row vector) -> H, E, DAB concentrations.
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
#: Haematoxylin, DAB and their residual (cross product), for H-DAB IHC such as PHH3.
RGB_FROM_HDX = stain_matrix(RGB_FROM_HED[0], RGB_FROM_HED[2])
#: Inverse of :data:`RGB_FROM_HDX`.
HDX_FROM_RGB = np.linalg.inv(RGB_FROM_HDX)

#: Reference H and E vectors (columns) of Macenko et al. (2009), as used by their
#: MATLAB code and torchstain.
MACENKO_REFERENCE_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
#: Reference 99th-percentile H and E concentrations of Macenko et al., converted
#: from natural-log OD (1.9705, 1.0308) to the log10 OD used here.
MACENKO_REFERENCE_MAX_CONC = np.array([1.9705, 1.0308]) / np.log(10.0)


# --------------------------------------------------------------------------- #
# input checks
# --------------------------------------------------------------------------- #


def _is_tensor(x: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return isinstance(x, torch.Tensor)


def _check_numpy_rgb(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have 3 channels in the last axis, got shape {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    return arr


def _check_tensor_rgb(image: "torch.Tensor", name: str = "image") -> None:
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"{name} tensor must be float in [0, 1], got dtype {image.dtype}")


def _check_i0(i0: float) -> float:
    i0 = float(i0)
    if not np.isfinite(i0) or i0 <= 0:
        raise ValueError(f"i0 must be a positive finite intensity, got {i0!r}")
    return i0


# --------------------------------------------------------------------------- #
# optical density
# --------------------------------------------------------------------------- #


@lru_cache(maxsize=16)
def od_lut(i0: float = I0_DEFAULT, bias: float = OD_BIAS) -> np.ndarray:
    """Optical density of each of the 256 uint8 intensities (float32, read-only).

    Parameters
    ----------
    i0 : float, optional
        Intensity of the incident light.
    bias : float, optional
        Epsilon added to the intensity before the logarithm (0 floors it at 1e-6).

    Returns
    -------
    numpy.ndarray
        ``(256,)`` float32; ``od_lut()[I]`` is ``-log10((I + bias) / i0)``.
    """
    i = np.arange(256, dtype=np.float64) + bias
    lut = (0.0 - np.log10(np.maximum(i, 1e-6 * 255) / i0)).astype(np.float32)  # no -0.0
    lut.flags.writeable = False
    return lut


def rgb_to_od(rgb: Image, *, i0: float = I0_DEFAULT, bias: float = OD_BIAS) -> Image:
    """Convert RGB intensities to optical density (Ruifrok & Johnston, eq. 2-4).

    Parameters
    ----------
    rgb : numpy.ndarray or torch.Tensor
        ``(..., 3)`` uint8 or float in [0, 1] (numpy), or ``(3, H, W)`` /
        ``(B, 3, H, W)`` float in [0, 1] (torch).
    i0 : float, optional
        Intensity of the incident light (255 = white).
    bias : float, optional
        Intensity bias added before the logarithm; ``0`` reproduces the plain
        ``-log10(I / i0)`` (with intensities floored at ``255e-6``).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Optical density, same layout; float32 for uint8 or float32 input,
        float64 for float64 input.  White (255) maps to ``-log10(256 / 255)``,
        slightly below zero.

    Examples
    --------
    >>> import numpy as np
    >>> from histoscope.stain import rgb_to_od
    >>> float(rgb_to_od(np.array([[254, 254, 254]], np.uint8))[0, 0])
    0.0
    """
    i0 = _check_i0(i0)
    if _is_tensor(rgb):
        _check_tensor_rgb(rgb)
        i = rgb * 255.0 + bias
        return -(i.clamp_min(1e-6 * 255) / i0).log10()
    arr = _check_numpy_rgb(rgb)
    if arr.dtype == np.uint8:
        return od_lut(i0, float(bias))[arr]
    i = arr * 255.0 + bias
    return -np.log10(np.maximum(i, 1e-6 * 255) / i0)


def od_to_rgb(
    od: Image, *, i0: float = I0_DEFAULT, bias: float = OD_BIAS, dtype: Any = None
) -> Image:
    """Convert optical density back to RGB (inverse of :func:`rgb_to_od`).

    Parameters
    ----------
    od : numpy.ndarray or torch.Tensor
        Optical density in the layout of :func:`rgb_to_od`.
    i0, bias : float, optional
        As in :func:`rgb_to_od`.
    dtype : numpy dtype, optional
        numpy only: ``numpy.uint8`` gives 0..255 integers (rounded, clipped);
        the default gives float in [0, 1] (clipped), like scikit-image.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        RGB; torch output is float in [0, 1].
    """
    i0 = _check_i0(i0)
    if _is_tensor(od):
        return ((i0 * 10.0 ** (-od) - bias) / 255.0).clamp(0.0, 1.0)
    arr = np.asarray(od)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"od must have 3 channels in the last axis, got shape {arr.shape}")
    intensity = i0 * np.power(10.0, -arr) - bias
    if dtype is not None and np.dtype(dtype) == np.uint8:
        return np.clip(np.rint(intensity), 0, 255).astype(np.uint8)
    out = np.clip(intensity / 255.0, 0.0, 1.0)
    return out.astype(dtype) if dtype is not None else out


# --------------------------------------------------------------------------- #
# glass versus tissue
# --------------------------------------------------------------------------- #

#: Background ramp (log10 OD of a pixel's darkest channel, with I0 = 255): pixels
#: whose darkest channel has OD <= 0.02 (every channel >= 243) are glass (weight
#: 0), OD >= 0.08 (some channel <= 211) tissue (weight 1), linear in between.
WHITE_RAMP = (0.02, 0.08)
#: A blend table that leaves nothing untouched (weight 1 for every intensity).
NO_BLEND = np.ones(256, dtype=np.float32)


def _ramp(od_max: Any) -> Any:
    lo, hi = WHITE_RAMP
    w = (od_max - lo) / (hi - lo)
    return w.clamp(0.0, 1.0) if _is_tensor(w) else np.clip(w, 0.0, 1.0)


@lru_cache(maxsize=1)
def tissue_weight_lut() -> np.ndarray:
    """``(256,)`` float64 :func:`tissue_weight` of a pixel whose darkest channel is ``I``."""
    lut = _ramp(od_lut(I0_DEFAULT, OD_BIAS).astype(np.float64))
    lut.flags.writeable = False
    return lut


def tissue_weight(rgb: Image) -> Image:
    """How much a pixel is tissue rather than glass, from its darkest channel.

    Used wherever histoscope keeps glass white (stain augmentation with
    ``preserve_white``, Macenko and Reinhard normalisation).

    Parameters
    ----------
    rgb : numpy.ndarray or torch.Tensor
        ``(..., 3)`` uint8 / float in [0, 1], or ``(3, H, W)`` / ``(B, 3, H, W)`` float.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Weight in [0, 1]: ``(...)`` for numpy, ``(1, H, W)`` / ``(B, 1, H, W)`` for torch
        (see :data:`WHITE_RAMP`).
    """
    if _is_tensor(rgb):
        _check_tensor_rgb(rgb)
        darkest = rgb.amin(dim=-3, keepdim=True)
        return _ramp(-((darkest * 255.0 + OD_BIAS).clamp_min(255e-6) / I0_DEFAULT).log10())
    arr = _check_numpy_rgb(rgb)
    darkest = arr.min(axis=-1)
    if arr.dtype == np.uint8:
        return tissue_weight_lut()[darkest]
    return _ramp(-np.log10(np.maximum(darkest * 255.0 + OD_BIAS, 255e-6) / I0_DEFAULT))


# --------------------------------------------------------------------------- #
# stain spaces
# --------------------------------------------------------------------------- #


def _as_matrix(matrix: Any, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be a finite 3x3 matrix, got shape {m.shape}")
    return m


def _apply_matrix(x: Image, m: np.ndarray) -> Image:
    """Row-vector product ``x @ m`` over the channel axis of either layout."""
    if _is_tensor(x):
        import torch

        mt = torch.as_tensor(m, dtype=x.dtype, device=x.device)
        return torch.einsum("...chw,cd->...dhw", x, mt)
    dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return x @ m.astype(dt, copy=False)


def rgb_to_stains(
    rgb: Image, conv_matrix: Any, *, i0: float = I0_DEFAULT, bias: float = OD_BIAS
) -> Image:
    """Stain concentrations of an RGB image: ``rgb_to_od(rgb) @ conv_matrix``.

    Parameters
    ----------
    rgb : numpy.ndarray or torch.Tensor
        As in :func:`rgb_to_od`.
    conv_matrix : array_like
        ``(3, 3)`` matrix from OD to stains, e.g. :data:`HED_FROM_RGB`.
    i0, bias : float, optional
        As in :func:`rgb_to_od`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Concentrations (log10 OD units, unclamped), same layout as ``rgb``.
    """
    m = _as_matrix(conv_matrix, "conv_matrix")
    return _apply_matrix(rgb_to_od(rgb, i0=i0, bias=bias), m)


def stains_to_rgb(
    stains: Image,
    conv_matrix: Any,
    *,
    i0: float = I0_DEFAULT,
    bias: float = OD_BIAS,
    dtype: Any = None,
) -> Image:
    """RGB image from stain concentrations: ``od_to_rgb(stains @ conv_matrix)``.

    Parameters
    ----------
    stains : numpy.ndarray or torch.Tensor
        Concentrations, channels last (numpy) or ``(B, 3, H, W)`` (torch).
    conv_matrix : array_like
        ``(3, 3)`` matrix from stains to OD, e.g. :data:`RGB_FROM_HED`.
    i0, bias, dtype :
        As in :func:`od_to_rgb`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        RGB, float in [0, 1] (or uint8 with ``dtype=numpy.uint8``).
    """
    m = _as_matrix(conv_matrix, "conv_matrix")
    if not _is_tensor(stains):
        stains = np.asarray(stains)
        if stains.ndim < 1 or stains.shape[-1] != 3:
            raise ValueError(f"stains must have 3 channels in the last axis, got shape {stains.shape}")
        if not np.issubdtype(stains.dtype, np.floating):
            stains = stains.astype(np.float64)
    return od_to_rgb(_apply_matrix(stains, m), i0=i0, bias=bias, dtype=dtype)


def rgb_to_hed(rgb: Image, *, i0: float = I0_DEFAULT, bias: float = OD_BIAS) -> Image:
    """Haematoxylin, eosin and DAB concentrations of an RGB image.

    Ruifrok & Johnston colour deconvolution with :data:`HED_FROM_RGB`.  Unlike
    :func:`skimage.color.rgb2hed`, negative concentrations are kept, so the
    round trip through :func:`hed_to_rgb` is exact.

    Parameters
    ----------
    rgb : numpy.ndarray or torch.Tensor
        ``(..., 3)`` uint8 or float in [0, 1], or ``(B, 3, H, W)`` float tensor.
    i0, bias : float, optional
        As in :func:`rgb_to_od`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        H, E, DAB concentrations in the channel axis (log10 OD units).

    Examples
    --------
    >>> import numpy as np
    >>> from histoscope.stain import rgb_to_hed, hed_to_rgb
    >>> x = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    >>> bool(np.array_equal(hed_to_rgb(rgb_to_hed(x), dtype=np.uint8), x))
    True
    """
    return rgb_to_stains(rgb, HED_FROM_RGB, i0=i0, bias=bias)


def hed_to_rgb(
    hed: Image, *, i0: float = I0_DEFAULT, bias: float = OD_BIAS, dtype: Any = None
) -> Image:
    """RGB image from H, E, DAB concentrations (inverse of :func:`rgb_to_hed`).

    Parameters
    ----------
    hed : numpy.ndarray or torch.Tensor
        Concentrations as returned by :func:`rgb_to_hed`.
    i0, bias, dtype :
        As in :func:`od_to_rgb`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        RGB, float in [0, 1] (or uint8 with ``dtype=numpy.uint8``).
    """
    return stains_to_rgb(hed, RGB_FROM_HED, i0=i0, bias=bias, dtype=dtype)


def rgb_to_dab(rgb: Image, *, i0: float = I0_DEFAULT, bias: float = OD_BIAS) -> Image:
    """DAB concentration of an H-DAB immunohistochemistry image (e.g. PHH3).

    Deconvolves with :data:`HDX_FROM_RGB` (haematoxylin, DAB, residual) and
    returns the DAB channel.

    Parameters
    ----------
    rgb : numpy.ndarray or torch.Tensor
        As in :func:`rgb_to_od`.
    i0, bias : float, optional
        As in :func:`rgb_to_od`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(...)`` (numpy, channel axis removed) or ``(B, H, W)`` / ``(H, W)``
        (torch) DAB optical density; brown stain is high.
    """
    hdx = rgb_to_stains(rgb, HDX_FROM_RGB, i0=i0, bias=bias)
    if _is_tensor(hdx):
        return hdx[..., 1, :, :]
    return hdx[..., 1]
