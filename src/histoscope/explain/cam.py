"""Class activation maps (CAM) and Grad-CAM heatmaps, their overlays and figures.

Torch side: a batch ``x`` of shape ``(B, C, H, W)`` (float; patches are ``(B, 3, H, W)``
in [0, 1]) goes in, a ``(B, H, W)`` float32 heatmap in [0, 1] comes out, detached, on
the device ``x`` came on.  The model runs on the device of its own parameters; ``x`` is
moved there for the call.  Numpy side: :func:`overlay_heatmap` takes an HxWx3 ``uint8``
RGB patch and an HxW heatmap and returns an HxWx3 ``uint8`` overlay.

Both maps run the model in eval mode and put everything back afterwards, also when
the model raises: the training flag of every submodule, the ``requires_grad`` flag of
every parameter, and the hooks (none is left behind).  No gradient reaches the
caller: parameters' ``.grad`` are not touched and the outputs carry no graph.

Normalisation, per image, after bilinear upsampling to the input size:

* :func:`class_activation_map` with ``relu=False`` (the default): min-max,
  ``(M - min M) / (max M - min M)``, as in the figures of Zhou et al. (2016), who
  do not clip the map: 0 is the least and 1 the most class evidence in that image.
* :func:`grad_cam`, and :func:`class_activation_map` with ``relu=True``: the map is
  rectified first and divided by its maximum, so 0 keeps its meaning ("no positive
  evidence") and a map with no positive evidence stays all zero.

For a network that ends in global average pooling and a linear layer, Grad-CAM at
the layer that produces the pooled feature map is ``ReLU(CAM) / (h w)``, so
``grad_cam(model, x, target_layer=...)`` equals
``class_activation_map(model, x, relu=True)`` (Selvaraju et al. 2017, Sec. 3.1);
the tests check this.

References
----------
.. [1] B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba, "Learning Deep
       Features for Discriminative Localization", CVPR 2016.
.. [2] R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra,
       "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
       Localization", ICCV 2017.
.. [3] Y. J. Kim et al., colorectal tissue classification, Fig. 9 (CAM heatmaps
       overlaid on patches); :func:`cam_figure` draws figures in that style.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.colors import Colormap

__all__ = ["class_activation_map", "grad_cam", "overlay_heatmap", "cam_figure"]

Target = int | Sequence[int] | torch.Tensor | None

_CAM_INTERFACE = ("forward_features", "forward_head", "get_classifier")


# --------------------------------------------------------------------------- helpers


def _check_batch(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor (e.g. (B, 3, H, W) in [0, 1]), got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch: {tuple(x.shape)}")
    return x


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback


def _check_logits(logits: Any, batch: int, where: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{where} must return a (B, K) logits tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ValueError(f"{where} must return (B, K) logits with B = {batch}, got shape {tuple(logits.shape)}")
    return logits


def _targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long class indices on the logits' device: argmax, one int for all, or one per image."""
    b, k = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool) or (isinstance(target, torch.Tensor) and target.dtype == torch.bool):
        raise TypeError("target must be class indices (int, sequence of ints or integer tensor), got bool")
    if isinstance(target, (int, np.integer)):
        t = torch.full((b,), int(target), dtype=torch.long)
    else:
        t = torch.as_tensor(target)
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(
                f"target must be an int or hold one class index per image ({b}), got shape {tuple(t.shape)}"
            )
        t = t.long()
    if bool(((t < 0) | (t >= k)).any()):
        raise ValueError(f"target class indices must lie in [0, {k - 1}] (the model has {k} classes), got {t.tolist()}")
    return t.to(logits.device)


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)`` float32 by bilinear interpolation (``align_corners=False``)."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _weighted_sum(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[b, k] * feats[b, k]``: ``(B, C)`` x ``(B, C, h, w)`` -> ``(B, h, w)`` float32.

    The one place both maps are formed, so CAM and Grad-CAM round alike.
    """
    return (weights.float()[:, :, None, None] * feats.float()).sum(dim=1)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per image ``(M - min) / (max - min)``; a constant map becomes all zero."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(maps))


def _by_max(maps: torch.Tensor) -> torch.Tensor:
    """Per image ``M / max M`` for a non-negative map; an all-zero map stays all zero."""
    top = maps.flatten(1).max(dim=1).values[:, None, None]
    return torch.where(top > 0, maps / torch.where(top > 0, top, 1.0), torch.zeros_like(maps))


@contextmanager
def _inference_state(model: nn.Module, *, freeze: bool) -> Iterator[None]:
    """Eval mode (and, with ``freeze``, no parameter requiring grad) inside; restored exactly on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


def _resolve_layer(model: nn.Module, target_layer: nn.Module | str) -> nn.Module:
    if isinstance(target_layer, str):
        names = [n for n, _ in model.named_modules() if n]
        try:
            layer = model.get_submodule(target_layer) if target_layer else None
        except AttributeError:
            layer = None
        if layer is None:
            close = difflib.get_close_matches(target_layer, names, n=8, cutoff=0.5)
            more = " ..." if len(names) > 12 else ""
            hint = f"close names: {close}" if close else f"layers are e.g. {names[:12]}{more}"
            raise ValueError(f"{type(model).__name__} has no layer {target_layer!r}; {hint}")
        return layer
    if isinstance(target_layer, nn.Module):
        if not any(m is target_layer for m in model.modules()):
            raise ValueError(
                f"target_layer ({type(target_layer).__name__}) is not a submodule of the model "
                f"({type(model).__name__}); pass a layer of this model or its dotted name"
            )
        return target_layer
    raise TypeError(f"target_layer must be an nn.Module or a dotted layer name, got {type(target_layer).__name__}")


# --------------------------------------------------------------------------- CAM


def class_activation_map(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target: Target = None,
    relu: bool = False,
) -> torch.Tensor:
    """Class activation maps of a global-average-pooling network (Zhou et al. 2016).

    For class ``c`` and the last feature map ``f_k(x, y)`` (``k`` = channel),
    ``M_c(x, y) = sum_k w_{c,k} f_k(x, y)`` where ``w`` is the weight of the linear
    classifier that follows the global average pooling ([1]_, Sec. 2; the class score
    is the spatial mean of ``M_c`` plus the bias, which the map leaves out).  The map
    is upsampled bilinearly to the input size and normalised per image.

    Parameters
    ----------
    model : torch.nn.Module
        A network with the timm interface: ``forward_features(x) -> (B, C, h, w)``,
        ``forward_head(features) -> (B, K)`` logits computed as global average pooling
        followed by ``get_classifier()``, a ``torch.nn.Linear(C, K)``.  It is run in
        eval mode, on the device of its parameters; its state is restored afterwards.
    x : torch.Tensor
        ``(B, C, H, W)`` float batch (patches: ``(B, 3, H, W)`` in [0, 1]).
    target : int, sequence of int or torch.Tensor, optional
        Class to explain: one index for every image, or ``(B,)`` indices (one per
        image).  ``None`` (default) explains the predicted class (argmax of the logits).
    relu : bool, optional
        ``False`` (default, as Zhou et al.): min-max normalisation of the raw map, so
        the least evidence in each image is 0 and the most is 1.  ``True``: negative
        evidence is clipped to 0 and the map divided by its maximum (the Grad-CAM
        normalisation; this is what :func:`grad_cam` gives for such a network).

    Returns
    -------
    torch.Tensor
        ``(B, H, W)`` float32 in [0, 1], detached, on the device of ``x``.  A map with
        no spread (or, with ``relu=True``, no positive value) is all zero.

    Raises
    ------
    TypeError
        If the model lacks the interface above, ``get_classifier()`` is not an
        ``nn.Linear``, or ``x`` / ``target`` have the wrong type.
    ValueError
        If shapes disagree (features not ``(B, C, h, w)``, classifier width not ``C``),
        ``forward_head`` is not global average pooling + ``get_classifier()`` (use
        :func:`grad_cam` for such networks), or a target index is out of range.

    References
    ----------
    .. [1] B. Zhou et al., "Learning Deep Features for Discriminative Localization",
           CVPR 2016.

    Examples
    --------
    >>> maps = class_activation_map(model, patches)            # doctest: +SKIP
    >>> overlay_heatmap(patch_uint8, maps[0].numpy())          # doctest: +SKIP
    """
    missing = [name for name in _CAM_INTERFACE if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"class_activation_map needs a model with forward_features(x) -> (B, C, h, w), "
            f"forward_head(features) -> (B, K) (global average pooling + linear) and get_classifier() -> nn.Linear; "
            f"{type(model).__name__} lacks {', '.join(missing)}. "
            "Use grad_cam(model, x, target_layer=...) for other networks."
        )
    x = _check_batch(x)
    out_device = x.device
    x = x.to(_model_device(model, x.device))
    b = x.shape[0]
    with torch.no_grad(), _inference_state(model, freeze=False):
        fc = model.get_classifier()
        if not isinstance(fc, nn.Linear):
            raise TypeError(
                f"class_activation_map needs get_classifier() to return the nn.Linear after global average pooling, "
                f"got {type(fc).__name__}"
            )
        feats = model.forward_features(x)
        if not isinstance(feats, torch.Tensor) or feats.ndim != 4 or feats.shape[0] != b:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"forward_features must return a (B, C, h, w) feature map with B = {b}, got {shape}")
        if feats.shape[1] != fc.in_features:
            raise ValueError(
                f"the classifier takes {fc.in_features} features but forward_features gives {feats.shape[1]} channels "
                f"(feature map {tuple(feats.shape)})"
            )
        logits = _check_logits(model.forward_head(feats), b, "forward_head")
        # CAM is only exact when the head is GAP + this linear layer: check it on this batch.
        expected = fc(feats.mean(dim=(2, 3)))
        if logits.shape != expected.shape or not torch.allclose(
            logits.float(), expected.float(), rtol=1e-3, atol=1e-3 * (1.0 + float(expected.abs().max()))
        ):
            raise ValueError(
                "forward_head(features) is not get_classifier()(global average pooling of features) on this batch "
                f"(logits {tuple(logits.shape)} vs {tuple(expected.shape)}); CAM needs a GAP + linear head, "
                "use grad_cam(model, x, target_layer=...) instead"
            )
        t = _targets(target, logits)
        maps = _weighted_sum(fc.weight[t], feats)  # w: (B, C), the weights of each image's class
        if relu:
            maps = maps.clamp_min(0)
        maps = _upsample(maps, tuple(x.shape[-2:]))
        maps = _by_max(maps) if relu else _minmax(maps)
    return maps.detach().to(out_device)


# --------------------------------------------------------------------------- Grad-CAM


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target_layer: nn.Module | str,
    target: Target = None,
) -> torch.Tensor:
    """Grad-CAM heatmaps of any network that maps ``x`` to ``(B, K)`` logits (Selvaraju et al. 2017).

    With ``A^k`` the activations of ``target_layer`` and ``y^c`` the logit of class
    ``c``, the channel weights are the spatial means of the gradients,
    ``alpha_k^c = (1 / Z) sum_ij dy^c / dA^k_ij`` ([1]_, Eq. 1), and the map is
    ``ReLU(sum_k alpha_k^c A^k)`` ([1]_, Eq. 2).  It is upsampled bilinearly to the
    input size and divided by its maximum, per image; an all-zero map stays zero.

    The activations are taken with a forward hook on ``target_layer``; the hook hands
    the rest of the network a copy, so in-place operations after the layer (e.g.
    ``ReLU(inplace=True)``) are harmless, and the gradients with respect to them are
    taken with :func:`torch.autograd.grad`, so no parameter's ``.grad`` is written.
    The model runs in eval mode with its parameters' ``requires_grad`` switched off
    (nothing before the layer builds a graph); the hook, the modes and the flags are
    restored on return, also when the model raises.  The gradient is taken of the
    sum of the images' scores, which is each image's own gradient for any network
    whose images do not interact in eval mode (true of CNNs with batch norm in eval).

    Parameters
    ----------
    model : torch.nn.Module
        ``model(x)`` must return ``(B, K)`` logits.  It runs on the device of its parameters.
    x : torch.Tensor
        ``(B, C, H, W)`` float batch (patches: ``(B, 3, H, W)`` in [0, 1]).
    target_layer : torch.nn.Module or str
        The layer whose output ``(B, C', h, w)`` is explained: a submodule of
        ``model`` or its dotted name (``"layer4"``, ``"features.denseblock4"``).  It
        must run exactly once per forward pass.  The usual choice is the last
        convolutional block.
    target : int, sequence of int or torch.Tensor, optional
        Class to explain: one index for all images or ``(B,)`` indices; ``None``
        (default) explains the predicted class.

    Returns
    -------
    torch.Tensor
        ``(B, H, W)`` float32 in [0, 1], detached, on the device of ``x``.

    Raises
    ------
    TypeError
        If ``target_layer`` is neither a module nor a string, the layer's output is not
        a tensor, or the model does not return a logits tensor.
    ValueError
        If ``target_layer`` is not in the model (the message lists close names), does
        not run exactly once, does not give ``(B, C', h, w)``, does not influence the
        logits, or a target index is out of range.

    References
    ----------
    .. [1] R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
           via Gradient-based Localization", ICCV 2017.

    Examples
    --------
    >>> from torchvision.models import resnet18
    >>> net = resnet18(weights=None, num_classes=3)
    >>> grad_cam(net, torch.rand(2, 3, 64, 64), target_layer="layer4").shape
    torch.Size([2, 64, 64])
    """
    x = _check_batch(x)
    layer = _resolve_layer(model, target_layer)
    out_device = x.device
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target_layer {type(module).__name__} must output a tensor, got {type(output).__name__}")
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # the network continues from a copy that in-place ops may modify

    # inference_mode(False): a caller inside torch.inference_mode() still gets a map.
    with torch.inference_mode(False), torch.enable_grad(), _inference_state(model, freeze=True):
        handle = layer.register_forward_hook(hook)
        try:
            xin = x.to(_model_device(model, x.device)).detach().clone()
            logits = _check_logits(model(xin), x.shape[0], "model(x)")
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(
                f"target_layer {type(layer).__name__} ran {len(captured)} times in one forward pass; Grad-CAM needs "
                "a layer that runs exactly once (is it on the path from x to the logits, and not shared?)"
            )
        acts = captured[0]
        if acts.ndim != 4 or acts.shape[0] != x.shape[0]:
            raise ValueError(
                f"target_layer must output a (B, C, h, w) feature map with B = {x.shape[0]}, got {tuple(acts.shape)}"
            )
        t = _targets(target, logits.detach())
        score = logits.gather(1, t[:, None]).sum()
        grads = torch.autograd.grad(score, acts, allow_unused=True)[0] if score.requires_grad else None
        if grads is None:
            raise ValueError(
                f"the logits do not depend on target_layer {type(layer).__name__}; pick a layer on the path"
            )
        with torch.no_grad():
            alpha = grads.float().mean(dim=(2, 3))  # Eq. 1
            maps = _weighted_sum(alpha, acts.detach()).clamp_min(0)  # Eq. 2
            maps = _by_max(_upsample(maps, tuple(x.shape[-2:])))
    return maps.detach().to(out_device)


# --------------------------------------------------------------------------- overlays and figures


def _heatmap_numpy(heatmap: Any) -> np.ndarray:
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().to("cpu", torch.float32).numpy()
    h = np.asarray(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap must have shape (H, W), got {h.shape}")
    if not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer) or h.dtype == bool):
        raise TypeError(f"heatmap must be a float array in [0, 1], got dtype {h.dtype}")
    h = h.astype(np.float64)
    if not np.isfinite(h).all():
        raise ValueError("heatmap has NaN or infinite values")
    if h.size and (h.min() < -1e-6 or h.max() > 1 + 1e-6):
        raise ValueError(f"heatmap values must lie in [0, 1], got [{h.min():.4g}, {h.max():.4g}]")
    return np.clip(h, 0.0, 1.0)


def _check_rgb(image: Any, name: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"{name} must be HxWx3 uint8 RGB, got dtype {a.dtype}")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must be HxWx3 uint8 RGB, got shape {a.shape}")
    return a


def _colormap(cmap: "str | Colormap") -> "Colormap":
    import matplotlib

    if isinstance(cmap, str):
        try:
            return matplotlib.colormaps[cmap]
        except KeyError:
            close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=5)
            raise ValueError(f"unknown matplotlib colormap {cmap!r}; close names: {close}") from None
    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    raise TypeError(f"cmap must be a colormap name or a matplotlib Colormap, got {type(cmap).__name__}")


def overlay_heatmap(
    image: np.ndarray,
    heatmap: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.4,
    cmap: "str | Colormap" = "jet",
) -> np.ndarray:
    """Blend a colour-mapped heatmap over an RGB patch.

    ``out = (1 - alpha) * image + alpha * cmap(heatmap)``, rounded to ``uint8``.

    Parameters
    ----------
    image : numpy.ndarray
        HxWx3 ``uint8`` RGB patch.
    heatmap : numpy.ndarray or torch.Tensor
        ``(h, w)`` float in [0, 1] (e.g. one map of :func:`class_activation_map`).  If
        its size differs from the image's it is resized bilinearly to ``(H, W)``.
    alpha : float, optional
        Opacity of the heatmap, in [0, 1]; 0 returns the image unchanged.
    cmap : str or matplotlib.colors.Colormap, optional
        Matplotlib colormap (``"jet"`` as in most CAM figures; ``"viridis"`` reads
        better in greyscale).

    Returns
    -------
    numpy.ndarray
        HxWx3 ``uint8`` RGB overlay, the layout of ``image``.

    Raises
    ------
    TypeError
        If ``image`` is not ``uint8`` or ``cmap`` is not a colormap.
    ValueError
        If shapes are wrong, the heatmap has values outside [0, 1] (or NaN),
        ``alpha`` is outside [0, 1] or the colormap name is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> patch = np.full((64, 64, 3), 200, np.uint8)
    >>> overlay_heatmap(patch, np.linspace(0, 1, 16).reshape(4, 4)).shape
    (64, 64, 3)
    """
    img = _check_rgb(image)
    heat = _heatmap_numpy(heatmap)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colormap = _colormap(cmap)
    if alpha == 0:
        return img.copy()
    if heat.shape != img.shape[:2]:
        from skimage.transform import resize

        heat = np.clip(resize(heat, img.shape[:2], order=1, mode="edge", anti_aliasing=False), 0.0, 1.0)
    colour = colormap(heat)[..., :3] * 255.0
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _as_images(images: Any) -> list[np.ndarray]:
    if isinstance(images, torch.Tensor):
        from ..utils.convert import tensor_to_image

        arr = tensor_to_image(images if images.ndim == 4 else images[None])
        return list(arr)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [_check_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [_check_rgb(images)]
    return [_check_rgb(im, f"images[{i}]") for i, im in enumerate(images)]


def _as_heatmaps(heatmaps: Any) -> list[Any]:
    if isinstance(heatmaps, (torch.Tensor, np.ndarray)):
        if heatmaps.ndim == 2:
            return [heatmaps]
        if heatmaps.ndim != 3:
            raise ValueError(
                f"heatmaps must be (N, H, W) or a sequence of (H, W) maps, got shape {tuple(heatmaps.shape)}"
            )
    return list(heatmaps)


def cam_figure(
    images: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    heatmaps: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    alpha: float = 0.4,
    cmap: "str | Colormap" = "jet",
    suptitle: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write a grid figure of patches and their heatmap overlays (Kim et al., Fig. 9 style).

    Each image takes two panels side by side, the patch and its overlay (see
    :func:`overlay_heatmap`), under its title, e.g. ``"true: adenoma / pred: adenoma
    0.93"``; ``ncols`` images per row, and one colour bar for the heatmap scale.  The
    file is written to a temporary name beside ``path`` and renamed, so a reader
    never sees a partial figure.

    Parameters
    ----------
    images : sequence of numpy.ndarray, numpy.ndarray or torch.Tensor
        HxWx3 ``uint8`` patches (a list, an ``(N, H, W, 3)`` array), or an
        ``(N, 3, H, W)`` float tensor in [0, 1].
    heatmaps : sequence of arrays, numpy.ndarray or torch.Tensor
        One ``(h, w)`` map in [0, 1] per image (an ``(N, h, w)`` array or tensor is
        fine, e.g. the output of :func:`class_activation_map`).
    path : str or os.PathLike
        Output file; the suffix picks the format (``.png``, ``.pdf``, ...).
    titles : sequence of str, optional
        One title per image.
    ncols : int, optional
        Images per row (each takes two panels).
    alpha, cmap : optional
        Passed to :func:`overlay_heatmap`.
    suptitle : str, optional
        Title of the whole figure.
    dpi : int, optional
        Resolution of raster output.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If the numbers of images, heatmaps and titles differ, there are no images, or
        ``ncols < 1``; see :func:`overlay_heatmap` for the checks of each pair.
    """
    ims = _as_images(images)
    heats = _as_heatmaps(heatmaps)
    n = len(ims)
    if n == 0:
        raise ValueError("cam_figure needs at least one image")
    if len(heats) != n:
        raise ValueError(f"got {n} images but {len(heats)} heatmaps")
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n:
            raise ValueError(f"got {n} images but {len(titles)} titles")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    overlays = [overlay_heatmap(im, h, alpha=alpha, cmap=cmap) for im, h in zip(ims, heats)]
    colormap = _colormap(cmap)

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cols = min(ncols, n)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(3.2 * cols + 0.7, 1.9 * rows + (0.5 if suptitle else 0.2)), layout="constrained")
    grid, bar = fig.subfigures(1, 2, width_ratios=[3.2 * cols, 0.7], wspace=0.0)
    subs = grid.subfigures(rows, cols, squeeze=False)
    for i in range(rows * cols):
        sub = subs[i // cols, i % cols]
        axes = sub.subplots(1, 2)
        for ax in axes:
            ax.set_axis_off()
        if i >= n:
            continue
        axes[0].imshow(ims[i], interpolation="nearest")
        axes[1].imshow(overlays[i], interpolation="nearest")
        if titles is not None:
            sub.suptitle(titles[i], fontsize=8)
    cax = bar.add_axes((0.08, 0.12, 0.22, 0.76))
    cb = bar.colorbar(ScalarMappable(Normalize(0, 1), colormap), cax=cax)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("heatmap", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    from ..utils.figures import save_figure

    try:
        return save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
