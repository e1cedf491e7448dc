"""Model registry: every histoscope network is created by name, with its preprocessing.

Follows timm / torchvision: ``register_model`` decorates a factory, ``create_model(name,
**kwargs)`` builds it, an unknown name raises ``ValueError`` listing the valid ones. Each model
carries a :class:`ModelConfig` (input size, microns per pixel, classes, normalisation) and
exposes ``forward_features`` / ``forward_head`` / ``get_classifier`` so CAM and Grad-CAM
(``histoscope.explain``) work on any of them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["ModelConfig", "InputNormalization", "register_model", "create_model", "list_models", "load_weights", "file_sha256", "stain_transform"]

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}


@dataclass
class ModelConfig:
    """What a model needs to be used correctly.

    Attributes
    ----------
    arch : str
        Registry name.
    num_classes : int
    classes : list of str
        Class names, in output order.
    input_size : int
        Square input side in pixels.
    mpp : float or None
        Microns per pixel the model expects (None: unspecified).
    mean, std : tuple of float
        Per-channel normalisation applied inside the model to inputs in [0, 1].
    stain : {"macenko"} or None
        Stain normalisation applied to every patch (uint8, before the model): ``"macenko"``
        maps each patch's H and E onto Macenko's reference stains.
    arch_kwargs : dict
        Extra arguments of the architecture's factory (e.g. ``width``), so that a saved
        model can be rebuilt exactly.
    """

    arch: str
    num_classes: int
    classes: list[str] = field(default_factory=list)
    input_size: int = 96
    mpp: float | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    stain: str | None = None

    def __post_init__(self) -> None:
        if self.stain not in (None, "macenko"):
            raise ValueError(f"stain must be None or 'macenko', got {self.stain!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes: {self.classes}")
        if not self.classes:
            self.classes = [str(i) for i in range(self.num_classes)]
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if self.mpp is not None and not (self.mpp > 0 and self.mpp < float("inf")):
            raise ValueError(f"mpp must be a positive number of microns per pixel or None, got {self.mpp!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        d.setdefault("arch_kwargs", {})
        return cls(**d)

    def build_kwargs(self) -> dict[str, Any]:
        """Arguments that rebuild this model with :func:`create_model`."""
        return {"num_classes": self.num_classes, "classes": list(self.classes), "input_size": self.input_size, "mpp": self.mpp, "stain": self.stain, **self.arch_kwargs}


class InputNormalization(torch.nn.Module):
    """``(x - mean) / std`` of a config, for ``(B, 3, H, W)`` inputs in [0, 1] (every model's first step)."""

    pointwise = True  # acts on each pixel alone (the one-pixel audit's incremental scoring relies on it)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) input, got {tuple(x.shape)}")
        return (x - self.mean) / self.std


def register_model(name: str) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    """Decorator: register a factory ``fn(config: ModelConfig, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of the registered models."""
    from . import mitosis, phh3, rcnn, tissue  # noqa: F401  (registers the built-in models)

    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    num_classes: int,
    classes: list[str] | None = None,
    input_size: int | None = None,
    mpp: float | None = None,
    stain: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a registered model (randomly initialised; never downloads anything).

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    num_classes : int
    classes : list of str, optional
    input_size : int, optional
        Default: the architecture's own (see its factory).
    mpp : float, optional
    stain : {"macenko"}, optional
        Stain normalisation of every input patch (see :class:`ModelConfig`).
    weights : path, optional
        A local ``state_dict`` file (or histoscope checkpoint) to load, e.g. to fine-tune;
        layers whose shapes differ (the classifier) are left initialised and reported.
    **kwargs
        Passed to the factory.

    Returns
    -------
    torch.nn.Module
        With ``.config`` (:class:`ModelConfig`), ``forward_features``, ``forward_head``,
        ``get_classifier``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones).
    """
    names = list_models()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {names}")
    factory = _REGISTRY[name]
    default_size = getattr(factory, "default_input_size", 96)
    cfg = ModelConfig(arch=name, num_classes=num_classes, classes=list(classes or []), input_size=input_size or default_size, mpp=mpp, arch_kwargs=dict(kwargs), stain=stain)
    model = factory(cfg, **kwargs)
    model.config = cfg
    if weights is not None:
        skipped = load_weights(model, weights, strict=False)
        if skipped:
            import logging

            logging.getLogger(__name__).warning(
                "%s: %d tensor(s) left initialised because their shapes differ (e.g. %s)", weights, len(skipped), skipped[:3]
            )
    return model


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (model cards record the checksum of their weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stain_transform(config: ModelConfig) -> Callable[[Any], Any] | None:
    """The uint8 HxWx3 -> uint8 patch transform a model's config asks for (None: nothing)."""
    if config.stain is None:
        return None
    import warnings

    from ..exceptions import StainWarning
    from ..stain import MacenkoNormalizer

    norm = MacenkoNormalizer(workers=1).fit_reference()

    def apply(image: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StainWarning)  # glass-only patches keep the reference, quietly
            return norm.transform(image)

    return apply


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> list[str]:
    """Load a local state dict (or a histoscope checkpoint's ``model`` entry) into ``model``.

    With ``strict=False`` tensors whose shapes differ are skipped; their names are returned.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such weights file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report which file is unreadable
        raise ValueError(f"{p}: not a PyTorch weights file ({exc.__class__.__name__}: {exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p}: not a state dict (a mapping of parameter names to tensors), got {type(state).__name__}")
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    fitting = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if strict and (skipped or set(own) != set(state)):
        missing = sorted(set(own) - set(state))[:5]
        raise ValueError(f"{p}: weights do not fit {type(model).__name__} (missing e.g. {missing}, shape mismatch {skipped[:5]})")
    if len(fitting) < len(own) / 2:
        raise ValueError(
            f"{p}: only {len(fitting)} of the model's {len(own)} tensors are in this file with the right shape; "
            f"these are weights of another architecture (e.g. the file has {list(state)[:3]})"
        )
    model.load_state_dict({k: state[k] for k in fitting}, strict=False)
    return skipped
