"""The slide-level CNN of Neural Image Compression, and its files.

:class:`SlideCNN` reads a compressed slide (an embedding grid, torch ``(B, C, H, W)``
float32, one code vector per patch position) and returns class logits or regression
values.  It follows Tellez et al. [1]_ (Sec. III-D): a stack of depthwise-separable
convolutions (depthwise 3x3 + pointwise 1x1, batch normalisation, leaky ReLU; stride 2
to downsample), global pooling, dropout and a small dense head.  It is narrower and
shallower than the paper's (128 filters, 8 layers) by default so that it trains in
about a minute on two CPU cores; ``width`` and ``depth`` set it.

The first block keeps stride 1, so its feature maps have the grid's size: that block is
:attr:`SlideCNN.first_layer`, the Grad-CAM target of the paper (eq. 7, see
:mod:`histoscope.nic.gradcam`).  Global pooling makes the network accept any grid size
``H, W >= 1`` (the convolutions are zero-padded), so a model trained on ``R x R`` crops
also runs on a whole grid.

The model carries its own input standardisation (per-channel mean and standard
deviation of the training codes, buffers set by
:func:`histoscope.nic.train.fit_slide_model`) and, for regression, the target scale,
so a saved model needs nothing else to predict.

References
----------
.. [1] D. Tellez, G. Litjens, J. van der Laak, F. Ciompi, "Neural Image Compression
       for Gigapixel Histopathology Image Analysis", IEEE TPAMI 2019 (arXiv:1811.02840).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..exceptions import ModelFileError

__all__ = ["Task", "TASKS", "SlideCNN", "save_slide_model", "load_slide_model", "SLIDE_MODEL_FORMAT"]

Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")
Pool = Literal["max", "avg"]

SLIDE_MODEL_FORMAT = "histoscope-nic-slide-cnn/1"


def check_task(task: Any) -> str:
    """``task`` if it is one of :data:`TASKS`, else ``ValueError`` listing them."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return str(task)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 (stride ``stride``) + pointwise 1x1 convolution, batch norm, leaky ReLU."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1, negative_slope: float = 0.1) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(negative_slope),
        )


class SlideCNN(nn.Module):
    """CNN on compressed slides with depthwise-separable convolutions (Tellez et al., NIC).

    Parameters
    ----------
    in_channels : int
        Code size ``C`` of the embedding grid.
    n_outputs : int
        Number of classes (``task="classification"``: the model returns logits; binary
        problems use 2) or of regression targets (usually 1).
    task : {"classification", "regression"}
        Recorded in :attr:`config`; decides how :func:`~histoscope.nic.train.predict_slides`
        reads the outputs (softmax probabilities or values).
    width : int
        Channels of every block (the paper uses 128).
    depth : int
        Number of separable-convolution blocks, >= 2.  The first has stride 1 (it is the
        Grad-CAM layer), the others stride 2: an ``R x R`` crop reaches global pooling
        at ``R / 2**(depth - 1)`` px.
    dropout : float
        Dropout before the dense head.
    pool : {"max", "avg"}
        Global pooling over the grid: ``"max"`` (default; a small lesion anywhere on a
        large grid can decide) or ``"avg"``.
    negative_slope : float
        Slope of the leaky ReLUs.

    Attributes
    ----------
    first_layer : torch.nn.Module
        The first block (separable conv, batch norm, leaky ReLU) whose ``(B, width, H, W)``
        output is explained by Grad-CAM (paper eq. 7).
    config : dict
        JSON-able constructor arguments (plus ``"kind": "slide_cnn"``).

    Examples
    --------
    >>> net = SlideCNN(32, 2, width=16, depth=3)
    >>> net(torch.zeros(4, 32, 64, 64)).shape
    torch.Size([4, 2])
    >>> net.eval()(torch.zeros(1, 32, 100, 37)).shape  # any grid size
    torch.Size([1, 2])
    """

    min_size: int = 1

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        *,
        task: Task = "classification",
        width: int = 32,
        depth: int = 4,
        dropout: float = 0.2,
        pool: Pool = "max",
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("n_outputs", n_outputs, 1),
                                 ("width", width, 1), ("depth", depth, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        check_task(task)
        if task == "classification" and n_outputs < 2:
            raise ValueError(f"classification needs n_outputs >= 2 classes (binary: 2), got {n_outputs}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.config: dict[str, Any] = {
            "kind": "slide_cnn",
            "in_channels": in_channels,
            "n_outputs": n_outputs,
            "task": task,
            "width": width,
            "depth": depth,
            "dropout": float(dropout),
            "pool": pool,
            "negative_slope": float(negative_slope),
        }
        blocks = [SeparableConv(in_channels, width, stride=1, negative_slope=negative_slope)]
        blocks += [SeparableConv(width, width, stride=2, negative_slope=negative_slope) for _ in range(depth - 1)]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.LeakyReLU(negative_slope),
            nn.Linear(width, n_outputs),
        )
        # Input standardisation and regression target scale (set by fit_slide_model).
        self.register_buffer("input_mean", torch.zeros(in_channels))
        self.register_buffer("input_std", torch.ones(in_channels))
        self.register_buffer("target_mean", torch.zeros(n_outputs))
        self.register_buffer("target_std", torch.ones(n_outputs))

    # ------------------------------------------------------------------ properties

    @property
    def first_layer(self) -> nn.Module:
        """The first separable-convolution block (stride 1): the Grad-CAM layer."""
        return self.features[0]

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def n_outputs(self) -> int:
        return self.config["n_outputs"]

    # ------------------------------------------------------------------ forward

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` grid -> ``(B, width, h, w)`` feature map (before global pooling)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SlideCNN expects a (B, {self.in_channels}, H, W) embedding grid, got shape {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"the grid must be at least {self.min_size} x {self.min_size}, got {tuple(x.shape[-2:])}")
        # background cells (codes all zero: not encoded, or padding) stay zero, so "no tissue"
        # looks the same before and after standardisation
        occupied = (x != 0).any(dim=1, keepdim=True).to(x.dtype)
        x = (x - self.input_mean[:, None, None]) / self.input_std[:, None, None] * occupied
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Feature map -> ``(B, n_outputs)``: logits, or regression values in target units."""
        out = self.head(self.pool(f))
        if self.task == "regression":
            out = out * self.target_std + self.target_mean
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def set_standardisation(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        target_mean: torch.Tensor | None = None,
        target_std: torch.Tensor | None = None,
    ) -> None:
        """Set the input (and, for regression, target) scale; zero standard deviations become 1."""
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != (self.in_channels,) or std.shape != (self.in_channels,):
            raise ValueError(
                f"mean and std must have shape ({self.in_channels},), got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.input_mean.copy_(mean)
        self.input_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        if target_mean is not None:
            self.target_mean.copy_(torch.as_tensor(target_mean, dtype=torch.float32).reshape(self.n_outputs))
        if target_std is not None:
            ts = torch.as_tensor(target_std, dtype=torch.float32).reshape(self.n_outputs)
            self.target_std.copy_(torch.where(ts > 0, ts, torch.ones_like(ts)))


# ---------------------------------------------------------------------- files


def save_slide_model(model: SlideCNN, path: str | os.PathLike[str], *, card: dict[str, Any] | None = None) -> Path:
    """Write a slide model to ``path`` (atomically: a temporary file renamed into place).

    The file is ``torch.save`` of a plain dict ``{"format": "histoscope-nic-slide-cnn/1",
    "config": model.config, "state_dict": ..., "card": card}`` (tensors, strings and
    numbers only), so :func:`load_slide_model` can read it with ``weights_only=True``.

    Parameters
    ----------
    model : SlideCNN
    path : str or os.PathLike
        Output file (parent folders are created).
    card : dict, optional
        JSON-able description (data, command, seed, metrics) stored with the weights.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if not isinstance(model, SlideCNN):
        raise TypeError(f"model must be a SlideCNN, got {type(model).__name__}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": SLIDE_MODEL_FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "card": dict(card) if card else {},
    }
    tmp = p.with_name(f".{p.name}.partial")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def load_slide_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SlideCNN:
    """Read a slide model written by :func:`save_slide_model`, in eval mode.

    Only ``torch.load(..., weights_only=True)`` is used: a file cannot run code.

    Parameters
    ----------
    path : str or os.PathLike
    device : str or torch.device
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.

    Returns
    -------
    SlideCNN
        With ``model.card`` set to the stored card.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not a readable PyTorch file, not a histoscope slide model
        (e.g. an encoder file or a bare state dict), or its weights do not fit its
        config.  The message names the file.
    """
    from ..utils.device import resolve_device

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such slide model file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFileError(
            f"{p}: refused by torch.load(weights_only=True): the file holds Python objects other than tensors and "
            "plain containers, so it is not a slide model written by histoscope.nic.save_slide_model "
            "(do not unpickle it unless you trust its source)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file: say which and why
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        msg = msg.splitlines()[0][:200] if msg else ""
        raise ModelFileError(
            f"{p}: not a readable histoscope slide model, truncated or corrupt ({type(exc).__name__}: {msg}); "
            "write one with histoscope.nic.save_slide_model"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise ModelFileError(f"{p}: not a histoscope slide model (expected a dict with format {SLIDE_MODEL_FORMAT!r})")
    fmt = payload.get("format")
    if fmt != SLIDE_MODEL_FORMAT:
        hint = " (an encoder: load it with histoscope.models.nic.load_encoder)" if "encoder" in str(fmt) else ""
        raise ModelFileError(f"{p}: format {fmt!r} is not a slide model ({SLIDE_MODEL_FORMAT!r}){hint}")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ModelFileError(f"{p}: slide model file lacks its config or state_dict")
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    try:
        in_channels, n_outputs = kwargs.pop("in_channels"), kwargs.pop("n_outputs")
        model = SlideCNN(in_channels, n_outputs, **kwargs)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise ModelFileError(f"{p}: slide model config and weights do not fit ({type(exc).__name__}: {msg})") from None
    model.card = payload.get("card") or {}
    return model.to(resolve_device(device)).eval()
