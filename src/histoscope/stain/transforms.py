"""The full augmentation set of Tellez et al. (2018), built from the paper's letters.

==========  =================================================================
letter      operation (parameters drawn independently per image)
==========  =================================================================
``R``       rotation by k * 90 degrees, k ~ {0, 1, 2, 3}, and a mirror with p = 0.5
``S``       scaling by a factor ~ U(0.75, 1.25) about the centre
``E``       elastic deformation, alpha = 100 px, sigma = 10 px (Simard et al.)
``C``       H&E stain augmentation in HED space, sigma = 0.05
            (:func:`histoscope.stain.hed_jitter`)
``H``       brightness ~ U(0.75, 1.25), contrast ~ U(0.75, 1.5), saturation
            ~ U(0.75, 1.5)
``B``       Gaussian blur, sigma ~ U(0, 2) px
``G``       additive Gaussian noise, sd ~ U(0, 0.1) (images in [0, 1])
==========  =================================================================

plus, with ``crop=N``, a random ``N x N`` crop (their 128 -> 100 px), i.e. a
translation of up to ``(size - N) / 2`` around the centre.  Operations run in
the order of the letters; the crop comes last.

What comes from torchvision (``transforms.v2.functional``): rotation/flip,
brightness/contrast/saturation, Gaussian blur and crop — their parameters match
the paper's.  Written here: (1) scaling and elastic deformation, because
torchvision's ``affine``/``elastic`` kernels can only fill the uncovered border
with a constant colour (a black or white frame inside a tissue patch), while
these resample with reflection at the border; its ``ElasticTransform`` also
scales ``alpha`` by the image size and draws from the global RNG; (2) Gaussian
noise, because torchvision's kernel draws from the global RNG, so it could not
be replayed; (3) the HED stain augmentation, which no maintained library does.

Every random draw comes from a seeded :class:`torch.Generator`; any output can be
replayed from the parameters returned with ``return_params=True``.  Inside a
:class:`torch.utils.data.DataLoader` worker the generator is re-seeded from the
seed and the worker's own seed, so workers do not repeat each other.

References
----------
.. [1] D. Tellez et al., "Whole-slide mitosis detection in H&E breast histology
       using PHH3 as a reference to train distilled stain-invariant
       convolutional networks", IEEE TMI 37(9), 2018, section II-F and Fig. 5.
.. [2] P. Y. Simard, D. Steinkraus and J. C. Platt, "Best practices for
       convolutional neural networks applied to visual document analysis",
       ICDAR 2003.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as TF

from .augmentation import HEDJitterParams, hed_jitter

__all__ = [
    "LETTERS",
    "AugmentConfig",
    "Augmentation",
    "augment",
    "parse_letters",
    "params_to_json",
    "params_from_json",
]

#: The paper's letters, in the order of its Fig. 5, with a description each.
LETTERS: dict[str, str] = {
    "R": "rotation (k x 90 degrees) and mirroring",
    "S": "scaling in [0.75, 1.25]",
    "E": "elastic deformation (alpha 100, sigma 10)",
    "C": "H&E stain augmentation (HED space, sigma 0.05)",
    "H": "brightness [0.75, 1.25], contrast [0.75, 1.5], saturation [0.75, 1.5]",
    "B": "Gaussian blur, sigma in [0, 2]",
    "G": "Gaussian noise, sd in [0, 0.1]",
}


def parse_letters(letters: str) -> str:
    """Validate an augmentation string such as ``"RCSEHBG"`` (upper-cased, no repeats)."""
    if not isinstance(letters, str):
        raise TypeError(f"letters must be a string such as 'RCSEHBG', got {type(letters).__name__}")
    s = letters.upper().replace(" ", "")
    bad = sorted(set(s) - set(LETTERS))
    if bad:
        raise ValueError(
            f"unknown augmentation letter(s) {bad} in {letters!r}; valid letters: "
            + ", ".join(f"{k} = {v}" for k, v in LETTERS.items())
        )
    if len(set(s)) != len(s):
        raise ValueError(f"augmentation letters repeat in {letters!r}")
    return s


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of every operation (defaults: Tellez et al. 2018).

    Attributes
    ----------
    scale : (float, float)
        Scaling factor range (S).
    elastic_alpha, elastic_sigma : float
        Elastic deformation magnitude and smoothness in pixels (E).
    hed_sigma : float
        HED stain augmentation strength (C).
    preserve_white : bool
        C keeps glass white.
    brightness, contrast, saturation : (float, float)
        Colour factor ranges (H).
    blur_sigma : (float, float)
        Gaussian blur sigma range in pixels (B).
    noise_sd : (float, float)
        Gaussian noise standard deviation range, images in [0, 1] (G).
    """

    scale: tuple[float, float] = (0.75, 1.25)
    elastic_alpha: float = 100.0
    elastic_sigma: float = 10.0
    hed_sigma: float = 0.05
    preserve_white: bool = False
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.75, 1.5)
    saturation: tuple[float, float] = (0.75, 1.5)
    blur_sigma: tuple[float, float] = (0.0, 2.0)
    noise_sd: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for name in ("scale", "brightness", "contrast", "saturation", "blur_sigma", "noise_sd"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi and math.isfinite(hi)):
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(lo, hi)}")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        for name in ("elastic_alpha", "elastic_sigma", "hed_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _identity_grid(n: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    ys = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device) if h > 1 else torch.zeros(1, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device) if w > 1 else torch.zeros(1, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)


def _resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling with reflection at the border (align_corners=True grid)."""
    return nnf.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=True)


def _gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian filter of ``(N, C, H, W)``, truncated at 4 sigma, mirrored borders.

    Equals ``scipy.ndimage.gaussian_filter(..., mode="mirror")`` per channel (to
    float32 rounding).  The image is mirror-padded by the kernel radius and
    filtered in the Fourier domain, so circular wrap-around never reaches the
    cropped result; for the elastic field's sigma = 10 (an 81-tap kernel) this
    is about 9x faster than separable convolutions and 40x faster than
    torchvision's 2-D ``gaussian_blur``.
    """
    n, c, h, w = x.shape
    r = min(int(4.0 * sigma + 0.5), h - 1, w - 1)
    if r < 1:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = nnf.pad(x, (r, r, r, r), mode="reflect")
    hh, ww = h + 2 * r, w + 2 * r

    def centred(length: int) -> torch.Tensor:
        kk = torch.zeros(length, dtype=x.dtype, device=x.device)
        kk[: r + 1] = k[r:]
        kk[-r:] = k[:r]
        return kk

    spec = torch.fft.rfft2(y) * torch.fft.fft(centred(hh))[:, None] * torch.fft.rfft(centred(ww))[None, :]
    return torch.fft.irfft2(spec, s=(hh, ww))[..., r : r + h, r : r + w]


class Augmentation(torch.nn.Module):
    """Random augmentation pipeline from the paper's letters (see module docstring).

    Parameters
    ----------
    letters : str, optional
        Operations to apply, in order, e.g. ``"RCSEHBG"`` (all) or ``"C"``.
    crop : int, optional
        Output side; a random ``crop x crop`` window is taken last (e.g. 100 from
        128 as in the paper).  None keeps the input size.
    config : AugmentConfig, optional
        Parameter ranges (defaults: the paper's).
    seed : int, optional
        Seed of the generator; the same seed replays the same stream.

    Examples
    --------
    >>> import torch
    >>> from histoscope.stain import Augmentation
    >>> aug = Augmentation("RCSEHBG", crop=100, seed=0)
    >>> x = torch.rand(4, 3, 128, 128)
    >>> y, params = aug(x, return_params=True)
    >>> tuple(y.shape)
    (4, 3, 100, 100)
    >>> bool(torch.equal(aug.replay(x, params), y))
    True
    """

    def __init__(
        self,
        letters: str = "RCSEHBG",
        *,
        crop: int | None = None,
        config: AugmentConfig | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.letters = parse_letters(letters)
        if crop is not None and (not isinstance(crop, int) or crop < 1):
            raise ValueError(f"crop must be a positive int or None, got {crop!r}")
        self.crop = crop
        self.config = config or AugmentConfig()
        self.seed = seed
        self._generator = torch.Generator()
        self._generator.manual_seed(seed if seed is not None else torch.seed())
        self._worker_seeded: int | None = None

    def extra_repr(self) -> str:
        return f"letters={self.letters!r}, crop={self.crop}, seed={self.seed}"

    # -- randomness ----------------------------------------------------------

    def manual_seed(self, seed: int) -> "Augmentation":
        """Restart the random stream from ``seed``."""
        self.seed = seed
        self._generator.manual_seed(seed)
        return self

    def _gen(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seeded != info.id:
            ss = np.random.SeedSequence([self.seed or 0, info.seed % 2**63])
            self._generator.manual_seed(int(ss.generate_state(1, np.uint64)[0] % 2**63))
            self._worker_seeded = info.id
        return self._generator

    # -- parameters ----------------------------------------------------------

    def make_params(self, n: int, height: int, width: int) -> list[dict[str, Any]]:
        """Draw the parameters of every operation for a batch of ``n`` images."""
        g = self._gen()
        c = self.config
        params: list[dict[str, Any]] = []
        for letter in self.letters:
            if letter == "R":
                p = {"k": torch.randint(0, 4, (n,), generator=g), "flip": torch.rand(n, generator=g) < 0.5}
            elif letter == "S":
                p = {"scale": _uniform(g, n, *c.scale)}
            elif letter == "E":
                # the field itself is drawn at apply time from this per-image seed
                p = {"seed": torch.randint(0, 2**62, (n,), generator=g)}
            elif letter == "C":
                s = c.hed_sigma
                p = {"alpha": _uniform(g, n * 3, 1 - s, 1 + s).reshape(n, 3), "beta": _uniform(g, n * 3, -s, s).reshape(n, 3)}
            elif letter == "H":
                p = {
                    "brightness": _uniform(g, n, *c.brightness),
                    "contrast": _uniform(g, n, *c.contrast),
                    "saturation": _uniform(g, n, *c.saturation),
                }
            elif letter == "B":
                p = {"sigma": _uniform(g, n, *c.blur_sigma)}
            else:  # "G"
                sd = _uniform(g, n, *c.noise_sd)
                p = {"sd": sd, "seed": torch.randint(0, 2**62, (n,), generator=g)}
            params.append({"op": letter, **p})
        if self.crop is not None:
            h2, w2 = self._crop_size(height, width)
            params.append(
                {
                    "op": "crop",
                    "top": torch.randint(0, height - h2 + 1, (n,), generator=g),
                    "left": torch.randint(0, width - w2 + 1, (n,), generator=g),
                }
            )
        return params

    def _crop_size(self, height: int, width: int) -> tuple[int, int]:
        assert self.crop is not None
        if self.crop > min(height, width):
            raise ValueError(f"crop {self.crop} is larger than the image ({height} x {width})")
        return self.crop, self.crop

    # -- application -----------------------------------------------------------

    def forward(self, x: torch.Tensor, *, return_params: bool = False) -> Any:
        """Augment ``(3, H, W)`` or ``(B, 3, H, W)`` images (float in [0, 1] or uint8).

        Returns float images in [0, 1] (and the parameters with ``return_params``).
        """
        xb, single = self._prepare(x)
        params = self.make_params(xb.shape[0], xb.shape[-2], xb.shape[-1])
        out = self._apply(xb, params)
        out = out[0] if single else out
        return (out, params) if return_params else out

    def replay(self, x: torch.Tensor, params: list[dict[str, Any]]) -> torch.Tensor:
        """Apply previously drawn parameters to ``x`` (deterministic)."""
        xb, single = self._prepare(x)
        out = self._apply(xb, params)
        return out[0] if single else out

    @staticmethod
    def _prepare(x: Any) -> tuple[torch.Tensor, bool]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"Augmentation takes a torch tensor (3, H, W) or (B, 3, H, W), got {type(x).__name__}; "
                "for numpy HxWx3 uint8 images use histoscope.stain.augment"
            )
        if x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"expected shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif not x.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1] or uint8, got {x.dtype}")
        return (x if x.ndim == 4 else x[None]), x.ndim == 3

    def _apply(self, x: torch.Tensor, params: list[dict[str, Any]]) -> torch.Tensor:
        for p in params:
            op = p["op"]
            if op == "R":
                if x.shape[-1] != x.shape[-2] and any(int(k) % 2 for k in p["k"]):
                    raise ValueError(
                        f"rotating a non-square batch ({x.shape[-2]} x {x.shape[-1]}) by 90 degrees would "
                        "change its shape; use square patches with R"
                    )
                outs = []
                for xi, k, f in zip(x, p["k"], p["flip"]):
                    yi = torch.rot90(xi, int(k), dims=(-2, -1))
                    outs.append(TF.horizontal_flip(yi) if bool(f) else yi)
                x = torch.stack(outs)
            elif op == "S":
                n, _, h, w = x.shape
                grid = _identity_grid(n, h, w, torch.float64, x.device) / p["scale"].to(x.device)[:, None, None, None]
                x = _resample(x, grid)
            elif op == "E":
                n, _, h, w = x.shape
                noise = torch.cat([torch.rand(1, 2, h, w, generator=torch.Generator().manual_seed(int(sd))) for sd in p["seed"]])
                field = _gaussian_filter(noise * 2.0 - 1.0, self.config.elastic_sigma) if self.config.elastic_sigma > 0 else noise * 2.0 - 1.0
                d = (field * self.config.elastic_alpha).to(x.device, torch.float64)  # pixels
                scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64, device=x.device)
                grid = _identity_grid(n, h, w, torch.float64, x.device) + d.permute(0, 2, 3, 1) * scale
                x = _resample(x, grid)
            elif op == "C":
                x = hed_jitter(
                    x.clamp(0.0, 1.0),
                    HEDJitterParams(p["alpha"].numpy(), p["beta"].numpy()),
                    preserve_white=self.config.preserve_white,
                )
            elif op == "H":
                x = torch.stack(
                    [
                        TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(xi, float(b)), float(c)), float(s))
                        for xi, b, c, s in zip(x, p["brightness"], p["contrast"], p["saturation"])
                    ]
                )
            elif op == "B":
                outs = []
                for xi, s in zip(x, p["sigma"]):
                    s = float(s)
                    k = 2 * math.ceil(3 * s) + 1
                    outs.append(TF.gaussian_blur(xi, [k, k], [s, s]) if s > 0.05 and k > 1 else xi)
                x = torch.stack(outs)
            elif op == "G":
                noise = []
                for xi, sd, seed in zip(x, p["sd"], p["seed"]):
                    gi = torch.Generator().manual_seed(int(seed))
                    noise.append(torch.randn(xi.shape, generator=gi, dtype=xi.dtype) * float(sd))
                x = (x + torch.stack(noise).to(x.device)).clamp(0.0, 1.0)
            elif op == "crop":
                h2, w2 = self._crop_size(x.shape[-2], x.shape[-1])
                x = torch.stack([TF.crop(xi, int(t), int(l_), h2, w2) for xi, t, l_ in zip(x, p["top"], p["left"])])
            else:
                raise ValueError(f"unknown operation {op!r} in the parameters")
        return x.clamp(0.0, 1.0)


def params_to_json(params: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """The parameters of image ``index`` of a batch, as JSON-friendly dicts.

    ``params_from_json`` turns a list of these back into batch parameters that
    :meth:`Augmentation.replay` accepts.
    """
    out = []
    for p in params:
        d: dict[str, Any] = {}
        for key, v in p.items():
            if isinstance(v, torch.Tensor):
                item = v[index]
                d[key] = item.tolist() if item.ndim else item.item()
            else:
                d[key] = v
        out.append(d)
    return out


def params_from_json(images: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Batch parameters from per-image JSON parameters (see :func:`params_to_json`)."""
    if not images:
        raise ValueError("no parameters given")
    ops = [[d["op"] for d in img] for img in images]
    if any(o != ops[0] for o in ops):
        raise ValueError(f"the images were augmented with different operations: {ops}")
    batch = []
    for j, first in enumerate(images[0]):
        p: dict[str, Any] = {"op": first["op"]}
        for key in first:
            if key == "op":
                continue
            values = [img[j][key] for img in images]
            if isinstance(values[0], bool):
                p[key] = torch.tensor(values, dtype=torch.bool)
            elif isinstance(values[0], int) and key in ("k", "seed", "top", "left"):
                p[key] = torch.tensor(values, dtype=torch.int64)
            else:
                p[key] = torch.tensor(values, dtype=torch.float64)
        batch.append(p)
    return batch


def augment(
    image: np.ndarray,
    letters: str = "RCSEHBG",
    *,
    crop: int | None = None,
    config: AugmentConfig | None = None,
    rng: int | None = None,
) -> np.ndarray:
    """Augment numpy ``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 images; uint8 out.

    A convenience over :class:`Augmentation` (seeded by ``rng``).
    """
    from ..utils.convert import image_to_tensor, tensor_to_image

    x = image_to_tensor(np.asarray(image))
    aug = Augmentation(letters, crop=crop, config=config, seed=0 if rng is None else int(rng))
    return tensor_to_image(aug(x))
