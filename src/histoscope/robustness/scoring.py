"""Scoring one-pixel perturbations of one image, plainly or incrementally.

:class:`PixelScorer` answers "what are the class probabilities of this image with pixel
``(y, x)`` set to colour ``c``?" for a batch of ``(y, x, c)`` triples.  Both the
differential-evolution attack and the brute-force confidence maps use it, so both get the
same two modes:

``plain``
    Builds the perturbed images on the target's device from the original (one copy and one
    indexed write per batch, no host round trip) and calls the black box.  Works for every
    :class:`~histoscope.robustness.target.Target`.
``incremental``
    For models that are a chain of *valid* (unpadded) convolutions and pointwise layers (the
    mitosis CNN of Table II, or any ``nn.Sequential`` of such layers): one pixel changes only
    a small window of the early feature maps.  The unperturbed activations of every layer are
    computed once; per perturbation only the affected window of each layer is recomputed
    (gathered from the cached map with the changed values pasted in), until the window spans
    the whole map.  The result equals the plain forward pass up to float rounding
    (:func:`histoscope.robustness.scoring.PixelScorer.check` verifies it on the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.convert import image_to_tensor
from .target import Target, TorchTarget

__all__ = ["PixelScorer", "chain_layers", "Mode"]

Mode = Literal["auto", "plain", "incremental"]

_POINTWISE = (nn.BatchNorm2d, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity)


def chain_layers(module: nn.Module) -> list[nn.Module] | None:
    """The module as a flat chain of valid convolutions and pointwise layers, or None.

    Models say so with a ``layers()`` method (the mitosis CNN) or by being an
    ``nn.Sequential``; any other layer (padding, pooling, linear) means no incremental mode.
    """
    if hasattr(module, "layers") and callable(module.layers):
        layers = list(module.layers())
    elif isinstance(module, nn.Sequential):
        layers = list(module)
    else:
        return None
    flat: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            sub = chain_layers(layer)
            if sub is None:
                return None
            flat += sub
        elif isinstance(layer, nn.Conv2d):
            if layer.padding not in ((0, 0), "valid") or layer.dilation != (1, 1) or layer.groups != 1:
                return None
            flat.append(layer)
        elif isinstance(layer, _POINTWISE) or getattr(layer, "pointwise", False):
            flat.append(layer)
        else:
            return None
    return flat


class _Step:
    """One step of the compiled chain: a convolution (batch norm folded in, activation fused) or a pointwise module."""

    def __init__(self, conv: nn.Conv2d | None = None, module: nn.Module | None = None) -> None:
        self.conv = conv
        self.module = module
        self.slope: float | None = None  # leaky ReLU slope (0: ReLU) fused after the convolution
        if conv is not None:
            self.weight = conv.weight.detach().clone()
            self.bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
            self.kernel, self.stride = conv.kernel_size, conv.stride

    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        self.weight = self.weight * scale.view(-1, 1, 1, 1)
        self.bias = (self.bias - bn.running_mean) * scale + bn.bias.detach()

    @property
    def weight_nhwc(self) -> torch.Tensor:
        return self.weight.contiguous(memory_format=torch.channels_last)  # a no-op once stored so (see _compile)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            assert self.module is not None
            return self.module(x)
        if x.shape[-2:] == self.kernel:  # one output per image: a matrix product
            y = torch.addmm(self.bias, x.reshape(x.shape[0], -1), self.weight.reshape(self.weight.shape[0], -1).t())[:, :, None, None]
        else:  # channels-last (NHWC): oneDNN runs these small maps 1.3-2x faster than NCHW
            y = F.conv2d(x.contiguous(memory_format=torch.channels_last), self.weight_nhwc, self.bias, self.stride)
        if self.slope is not None:
            y = F.leaky_relu(y, self.slope, inplace=True) if self.slope else F.relu(y, inplace=True)
        return y


def _compile(layers: list[nn.Module]) -> list[_Step]:
    """Fold batch norms into the convolutions before them and fuse their (leaky) ReLUs; drop no-ops."""
    steps: list[_Step] = []
    for layer in layers:
        last = steps[-1] if steps else None
        if isinstance(layer, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            continue  # eval mode
        if isinstance(layer, nn.Conv2d):
            steps.append(_Step(conv=layer))
        elif isinstance(layer, nn.BatchNorm2d) and last is not None and last.conv is not None and last.slope is None:
            last.fold_bn(layer)
        elif isinstance(layer, (nn.LeakyReLU, nn.ReLU)) and last is not None and last.conv is not None and last.slope is None:
            last.slope = float(layer.negative_slope) if isinstance(layer, nn.LeakyReLU) else 0.0
        else:
            steps.append(_Step(module=layer))
    for step in steps:
        if step.conv is not None:
            step.weight = step.weight.contiguous(memory_format=torch.channels_last)
    return steps


def _windows(x: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    """Every ``rh x rw`` window of a ``(C, H, W)`` map as a view ``(H - rh + 1, W - rw + 1, C, rh, rw)``."""
    c, hh, ww = x.shape
    return x.as_strided((hh - rh + 1, ww - rw + 1, c, rh, rw), (ww, 1, hh * ww, ww, 1))


def _paste(region: torch.Tensor, win: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``region`` (B, C, rh, rw) with ``win`` (B, C, h, w) written at per-sample offsets (parts outside dropped)."""
    b, c, rh, rw = region.shape
    h, w = win.shape[-2:]
    iy = dy[:, None] + torch.arange(h, device=dy.device)  # (B, h) rows in the region
    ix = dx[:, None] + torch.arange(w, device=dx.device)
    ok = ((iy >= 0) & (iy < rh))[:, :, None] & ((ix >= 0) & (ix < rw))[:, None, :]
    flat = torch.where(ok, iy[:, :, None] * rw + ix[:, None, :], rh * rw).view(b, 1, h * w).expand(b, c, h * w)
    out = torch.empty(b, c, rh * rw + 1, dtype=region.dtype, device=region.device)  # last slot: trash
    out[:, :, : rh * rw] = region.reshape(b, c, rh * rw)
    out.scatter_(2, flat, win.reshape(b, c, h * w))
    return out[:, :, : rh * rw].reshape(b, c, rh, rw)


class PixelScorer:
    """Class probabilities of one image under one-pixel perturbations.

    Parameters
    ----------
    target : Target
    image : ndarray
        ``(H, W, 3)`` uint8 RGB.
    mode : {"auto", "plain", "incremental"}
        ``auto``: incremental when the target is a chain of valid convolutions, else plain.
    batch_size : int
        Perturbations scored per call to the model.
    """

    def __init__(self, target: Target, image: np.ndarray, *, mode: Mode = "auto", batch_size: int = 1024) -> None:
        self.target = target
        self.device = target.device
        self.image = np.ascontiguousarray(image)
        self.base = image_to_tensor(self.image)[None].to(self.device)
        self.height, self.width = self.image.shape[:2]
        self.batch_size = int(batch_size)
        layers = chain_layers(target.module) if isinstance(target, TorchTarget) and target.outputs == "logits" else None
        if mode not in ("auto", "plain", "incremental"):
            raise ValueError(f"mode must be 'auto', 'plain' or 'incremental', got {mode!r}")
        if mode == "incremental" and layers is None:
            raise ValueError(
                f"incremental mode needs a PyTorch model that is a chain of unpadded convolutions and pointwise layers "
                f"(like the mitosis CNN); {target.name} is not: use mode='plain'"
            )
        self.mode: str = "incremental" if layers is not None and mode != "plain" else "plain"
        self.original = target(self.base)[0]  # one query
        self._steps = _compile(layers) if self.mode == "incremental" and layers is not None else None
        if self._steps is not None:
            self._cache_activations()

    # -- the unperturbed activations -------------------------------------------------------
    @torch.inference_mode()
    def _cache_activations(self) -> None:
        assert self._steps is not None
        self._inputs: list[torch.Tensor] = []
        h = self.base
        for step in self._steps:
            self._inputs.append(h.contiguous())
            h = step.full(h)
        p = torch.softmax(h.flatten(1), dim=1)[0]
        if p.shape != self.original.shape or not torch.allclose(p, self.original, atol=1e-5):
            raise ValueError(f"{self.target.name}: its layers chained do not reproduce its output; use mode='plain'")

    # -- scoring ----------------------------------------------------------------------------
    def __call__(self, ys: torch.Tensor, xs: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, K)`` with pixel ``(ys[i], xs[i])`` set to ``colours[i]`` (0-255 RGB)."""
        ys = torch.as_tensor(ys, device=self.device).long()
        xs = torch.as_tensor(xs, device=self.device).long()
        colours = torch.as_tensor(colours, device=self.device).float()
        if ys.shape != xs.shape or colours.shape != (ys.shape[0], 3):
            raise ValueError(f"ys, xs must be (B,) and colours (B, 3); got {tuple(ys.shape)}, {tuple(xs.shape)}, {tuple(colours.shape)}")
        if ys.numel() and (ys.min() < 0 or ys.max() >= self.height or xs.min() < 0 or xs.max() >= self.width):
            raise ValueError(f"pixel positions outside the {self.height} x {self.width} image")
        outs = []
        for i in range(0, ys.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            if self.mode == "incremental":
                outs.append(self._incremental(ys[sl], xs[sl], colours[sl] / 255))
            else:
                outs.append(self._plain(ys[sl], xs[sl], colours[sl] / 255))
        return torch.cat(outs) if outs else torch.empty(0, self.original.shape[0], device=self.device)

    def perturbed(self, ys: torch.Tensor, xs: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """The perturbed images ``(B, 3, H, W)`` in [0, 1], built on the device."""
        b = ys.shape[0]
        batch = self.base.expand(b, -1, -1, -1).clone()
        batch[torch.arange(b, device=self.device), :, ys, xs] = colours
        return batch

    def _plain(self, ys: torch.Tensor, xs: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        return self.target(self.perturbed(ys, xs, colours))

    @torch.inference_mode()
    def _incremental(self, ys: torch.Tensor, xs: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """Scores from the cached activations, recomputing only what the pixel changes.

        Per sample the exact range of changed rows / columns is tracked through every layer;
        a batch computes the smallest window (one size for the batch, per-sample origins)
        that holds every sample's changed range, so perturbations near the border (which
        reach few outputs of the deep layers) cost less.
        """
        assert self._steps is not None
        b = ys.shape[0]
        self.target.queries += b  # each perturbation is one (cheaper) model evaluation
        win = colours.view(b, 3, 1, 1)
        oy, ox = ys, xs  # per-sample origin of the batch window in the current layer
        ylo, yhi, xlo, xhi = ys, ys, xs, xs  # per-sample changed range (inclusive)
        h = w = 1
        for step, cached in zip(self._steps, self._inputs):
            if step.conv is None:
                win = step.full(win)
                continue
            hin, win_w = cached.shape[-2:]
            (kh, kw), (sh, sw) = step.kernel, step.stride
            hout, wout = (hin - kh) // sh + 1, (win_w - kw) // sw + 1
            if h == hin and w == win_w:  # the change already spans the map
                win = step.full(win)
                oy = ox = ylo = xlo = torch.zeros_like(oy)
                yhi, xhi = torch.full_like(oy, hout - 1), torch.full_like(ox, wout - 1)
                h, w = hout, wout
                continue
            # outputs that see the changed range: ceil((lo - k + 1) / s) .. floor(hi / s), inside the map
            ylast, xlast = (yhi // sh).clamp(max=hout - 1), (xhi // sw).clamp(max=wout - 1)
            ylo, xlo = torch.minimum((-((kh - 1 - ylo) // sh)).clamp(min=0), ylast), torch.minimum((-((kw - 1 - xlo) // sw)).clamp(min=0), xlast)
            yhi, xhi = ylast, xlast
            nh, nw = int((yhi - ylo).max()) + 1, int((xhi - xlo).max()) + 1
            ny, nx = ylo.clamp(max=hout - nh), xlo.clamp(max=wout - nw)
            rh, rw = (nh - 1) * sh + kh, (nw - 1) * sw + kw
            region = _paste(_windows(cached[0], rh, rw)[ny * sh, nx * sw], win, oy - ny * sh, ox - nx * sw)
            win = step.full(region)
            oy, ox, h, w = ny, nx, nh, nw
        if (h, w) != (1, 1):
            raise ValueError(f"{self.target.name}: the last layer gives a {h} x {w} map, not one score per image")
        return torch.softmax(win.flatten(1), dim=1)

    def check(self, n: int = 64, seed: int = 0, atol: float = 1e-5) -> float:
        """Max |incremental - plain| over ``n`` random perturbations (raises above ``atol``)."""
        rng = np.random.default_rng(seed)
        ys = torch.as_tensor(rng.integers(0, self.height, n), device=self.device)
        xs = torch.as_tensor(rng.integers(0, self.width, n), device=self.device)
        cs = torch.as_tensor(rng.integers(0, 256, (n, 3)), device=self.device).float()
        plain = self._plain(ys, xs, cs / 255)
        if self.mode != "incremental":
            return 0.0
        err = float((self._incremental(ys, xs, cs / 255) - plain).abs().max())
        if err > atol:
            raise AssertionError(f"incremental scores differ from plain ones by {err:.2e} > {atol}")
        return err


def colour_grid(step: int) -> np.ndarray:
    """Every ``step``-th value per channel *including 255*, all combinations: ``(n^3, 3)`` uint8.

    ``step=5`` is the paper's set (52^3 = 140,608 colours).
    """
    if not 1 <= step <= 255:
        raise ValueError(f"colour step must be in 1..255, got {step}")
    values = np.unique(np.r_[np.arange(0, 256, step), 255]).astype(np.uint8)
    g = np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1)
    return g.reshape(-1, 3)


def as_colours(colours: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """A user colour list as ``(n, 3)`` uint8 (checks the range)."""
    c = np.asarray(colours)
    if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] == 0:
        raise ValueError(f"colours must be an (n, 3) list of RGB triples, got shape {c.shape}")
    if c.min() < 0 or c.max() > 255:
        raise ValueError("colour values must be in 0..255")
    return c.astype(np.uint8)
