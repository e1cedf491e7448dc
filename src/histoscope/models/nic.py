"""Patch encoders of Neural Image Compression (NIC): a P x P patch -> a code of C numbers.

A gigapixel slide is compressed by cutting it into P x P patches and replacing each patch
by its code, giving an array of shape ``(rows, cols, C)`` that a slide-level CNN can learn
from ([1]_, section 2). This module holds the encoders themselves; training them lives in
:mod:`histoscope.train.nic` and compressing slides in :mod:`histoscope.infer`.

Encoders (``kind``):

==============  ==========================================================================
``mean_rgb``    baseline: the mean colour of the patch (C = 3, no parameters, any P)
``vae``         variational autoencoder ([1]_ eq. 2-3): conv trunk -> mean and log-variance
                heads; a decoder mirrors the trunk. The code is the mean.
``contrastive`` Siamese conv trunk -> C, with a pair head that tells whether two patches
                show the same location ([1]_ section 2.2.2)
``bigan``       bidirectional GAN ([1]_ eq. 6): encoder E(x) -> z, generator G(z) -> x,
                discriminator D(x, z) -> logit
``supervised``  the global-average-pooled features of a trained tissue classifier
                (:class:`~histoscope.models.tissue.TissueNet`)
==============  ==========================================================================

Every encoder takes ``(B, 3, P, P)`` float in [0, 1] and returns ``(B, C)`` float32; it is
deterministic in eval mode (``load_encoder`` and ``train_encoder`` return encoders in eval
mode). The conv trunk works for any P >= 4: stride-2 3x3 convolutions until the map is at
most 4 px, then a linear layer to C; decoders and generators mirror it exactly (linear ->
map -> transposed convolutions -> sigmoid), so P = 8 (synthetic digits) and P = 128 (slides
at 0.5 um/px) both work.

Files: :func:`save_encoder` writes a plain dict (``torch.save``) that :func:`load_encoder`
reads with ``weights_only=True`` only. Bundled encoders are ``models/weights/nic_<kind>.pt``
with a JSON card ``nic_<kind>.json`` (``"sha256"``, ``"config"``) whose checksum is verified
before the file is read.

References
----------
.. [1] D. Tellez, G. Litjens, J. van der Laak, F. Ciompi, "Neural Image Compression for
       Gigapixel Histopathology Image Analysis", IEEE TPAMI 43(2), 2021 (arXiv:1811.02840).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..exceptions import ModelFileError
from ..utils.device import resolve_device
from .registry import file_sha256

__all__ = [
    "ENCODER_KINDS",
    "EncoderKind",
    "ENCODER_FORMAT",
    "PatchEncoder",
    "MeanRGBEncoder",
    "VAEEncoder",
    "ContrastiveEncoder",
    "BiGANEncoder",
    "SupervisedEncoder",
    "create_encoder",
    "save_encoder",
    "load_encoder",
    "bundled_encoder_path",
]

EncoderKind = Literal["mean_rgb", "vae", "contrastive", "bigan", "supervised"]
ENCODER_KINDS: tuple[str, ...] = ("mean_rgb", "vae", "contrastive", "bigan", "supervised")
#: Format tag of the files written by :func:`save_encoder`.
ENCODER_FORMAT = "histoscope-nic-encoder/1"
#: Classifier whose features are the "supervised" encoder when no nic_supervised bundle exists.
DEFAULT_SUPERVISED_MODEL = "colorectal_grader"


def _bundled_dir() -> Path:
    from .pretrained import BUNDLED

    return BUNDLED


def bundled_encoder_path(kind: str) -> Path:
    """Where a bundled encoder of ``kind`` lives: ``models/weights/nic_<kind>.pt`` (card: ``.json``)."""
    return _bundled_dir() / f"nic_{kind}.pt"


# ---------------------------------------------------------------------------- building blocks
def _trunk_sizes(patch_size: int) -> list[int]:
    """Spatial sizes of the conv trunk: P, ceil(P/2), ... down to the first size <= 4."""
    sizes = [int(patch_size)]
    while sizes[-1] > 4:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _stage_channels(n_stages: int, width: int) -> list[int]:
    """Channels after each stride-2 stage: width, 2 width, 4 width, 4 width, ..."""
    return [min(width * 2**i, 4 * width) for i in range(n_stages)]


class ConvTrunk(nn.Module):
    """Stride-2 3x3 convolutions (+ norm + LeakyReLU) until the map is <= 4 px, then flatten.

    ``out_features`` = channels x side x side of the last map (3 x P x P when P <= 4).
    """

    def __init__(self, patch_size: int, width: int, *, norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.sizes = _trunk_sizes(patch_size)
        chans = _stage_channels(len(self.sizes) - 1, width)
        layers: list[nn.Module] = []
        cin = 3
        for c in chans:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=not norm)]
            if norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
            cin = c
        self.body = nn.Sequential(*layers)
        self.out_channels = cin
        self.out_side = self.sizes[-1]
        self.out_features = cin * self.out_side**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x * 2.0 - 1.0), 1)  # [0, 1] -> [-1, 1]


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvTrunk`: linear -> (C, s, s) -> transposed convs -> sigmoid, P x P x 3."""

    def __init__(self, code_size: int, patch_size: int, width: int) -> None:
        super().__init__()
        self.sizes = _trunk_sizes(patch_size)
        chans = _stage_channels(len(self.sizes) - 1, width)
        self.start = chans[-1] if chans else 3
        side = self.sizes[-1]
        self.fc = nn.Sequential(nn.Linear(code_size, self.start * side * side), nn.LeakyReLU(0.2, inplace=True))
        ups: list[nn.Module] = []
        outs = list(reversed(chans[:-1])) + [3] if chans else []
        cin = self.start
        for i, c in enumerate(outs):
            ups.append(nn.ConvTranspose2d(cin, c, 3, stride=2, padding=1))
            if i < len(outs) - 1:
                ups += [nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
            cin = c
        self.ups = nn.ModuleList(ups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        side = self.sizes[-1]
        x = self.fc(z).view(z.shape[0], self.start, side, side)
        targets = list(reversed(self.sizes[:-1]))
        k = 0
        for m in self.ups:
            if isinstance(m, nn.ConvTranspose2d):
                x = m(x, output_size=[targets[k], targets[k]])  # exact mirror for odd sizes too
                k += 1
            else:
                x = m(x)
        return torch.sigmoid(x)


# ---------------------------------------------------------------------------- encoders
class PatchEncoder(nn.Module):
    """Base class: a patch encoder ``(B, 3, P, P)`` float in [0, 1] -> ``(B, C)`` float32.

    Attributes
    ----------
    kind : str
        One of :data:`ENCODER_KINDS`.
    config : dict
        JSON-able description that rebuilds the encoder with :func:`create_encoder`
        (``kind``, ``code_size``, ``patch_size``, ``mpp``, ``width``, ...).
    """

    kind: ClassVar[str] = ""
    #: whether any patch size is accepted (the mean-RGB baseline)
    any_size: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.config["kind"] = self.kind

    @property
    def code_size(self) -> int:
        """C, the length of a code."""
        return int(self.config["code_size"])

    @property
    def patch_size(self) -> int:
        """P, the side of the patches the encoder was built (or trained) for."""
        return int(self.config["patch_size"])

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of the patches the encoder expects (None: unspecified)."""
        v = self.config.get("mpp")
        return None if v is None else float(v)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor (B, 3, P, P), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects (B, 3, P, P) input, got {tuple(x.shape)}")
        if not self.any_size and tuple(x.shape[2:]) != (self.patch_size, self.patch_size):
            raise ValueError(
                f"{type(self).__name__} ({self.kind}) was built for {self.patch_size} x {self.patch_size} patches, "
                f"got {x.shape[2]} x {x.shape[3]}"
            )

    def _encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, C)`` float32 of patches ``(B, 3, P, P)`` in [0, 1].

        Deterministic (the VAE gives its mean, no sampling) once the encoder is in eval
        mode; gradients flow when they are enabled, so training can use it too.
        """
        self._check_input(x)
        return self._encode(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def preprocess(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The uint8 HxWx3 -> uint8 patch transform the encoder expects before :meth:`encode` (None: none)."""
        return None

    @torch.no_grad()
    def encode_images(
        self,
        images: np.ndarray,
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        verbose: bool = False,
    ) -> np.ndarray:
        """Codes of uint8 images ``(N, P, P, 3)``: ``(N, C)`` float32, in eval mode.

        Applies :meth:`preprocess` (e.g. the supervised encoder's stain normalisation) and
        restores the encoder's train/eval mode afterwards.
        """
        from tqdm.auto import tqdm

        from ..utils.convert import image_to_tensor

        arr = np.asarray(images)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, P, P, 3), got {arr.dtype} {arr.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prep = self.preprocess()
        was_training = self.training
        self.eval()
        out = np.zeros((len(arr), self.code_size), np.float32)
        try:
            for s in tqdm(range(0, len(arr), batch_size), desc=f"encode {self.kind}", disable=not verbose, leave=False):
                chunk = arr[s : s + batch_size]
                if prep is not None:
                    chunk = np.stack([prep(im) for im in chunk])
                x = image_to_tensor(chunk).to(device)
                out[s : s + len(chunk)] = self.encode(x).cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, code_size={self.code_size}, patch_size={self.patch_size}, mpp={self.mpp}"


class MeanRGBEncoder(PatchEncoder):
    """Baseline: the mean R, G, B of the patch (C = 3, no parameters, any patch size)."""

    kind = "mean_rgb"
    any_size = True

    def __init__(self, *, patch_size: int = 128, mpp: float | None = 0.5) -> None:
        super().__init__({"code_size": 3, "patch_size": int(patch_size), "mpp": mpp})

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class VAEEncoder(PatchEncoder):
    """Variational autoencoder ([1]_ eq. 2-3): q(z|x) = N(mu(x), diag(exp(logvar(x)))).

    ``encode`` gives ``mu``; :meth:`forward_train` samples ``z = mu + exp(logvar / 2) * eps``
    (reparameterisation) and decodes it.
    """

    kind = "vae"

    def __init__(self, *, code_size: int = 128, patch_size: int = 128, mpp: float | None = 0.5, width: int = 32) -> None:
        super().__init__({"code_size": int(code_size), "patch_size": int(patch_size), "mpp": mpp, "width": int(width)})
        self.trunk = ConvTrunk(patch_size, width)
        self.mu = nn.Linear(self.trunk.out_features, code_size)
        self.logvar = nn.Linear(self.trunk.out_features, code_size)
        self.decoder = ConvDecoder(code_size, patch_size, width)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu(self.trunk(x))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x), each ``(B, C)``."""
        self._check_input(x)
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, C)`` -> patches ``(B, 3, P, P)`` in [0, 1]."""
        return self.decoder(z)

    def forward_train(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, mu, logvar)``: reconstruction of a sample ``z ~ q(z|x)`` (reparameterised)."""
        mu, logvar = self.posterior(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


class ContrastiveEncoder(PatchEncoder):
    """Siamese encoder ([1]_ section 2.2.2): one conv trunk for both patches of a pair, and a
    pair head that predicts whether they show the same location.

    The pair head is symmetric in its two inputs: an MLP on ``[|z1 - z2|, z1 * z2]``.
    """

    kind = "contrastive"

    def __init__(self, *, code_size: int = 128, patch_size: int = 128, mpp: float | None = 0.5, width: int = 32) -> None:
        super().__init__({"code_size": int(code_size), "patch_size": int(patch_size), "mpp": mpp, "width": int(width)})
        self.trunk = ConvTrunk(patch_size, width)
        self.fc = nn.Linear(self.trunk.out_features, code_size)
        hidden = max(code_size // 2, 16)
        self.head = nn.Sequential(nn.Linear(2 * code_size, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def pair_logit(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Logit ``(B,)`` that codes ``z1`` and ``z2`` come from the same location."""
        return self.head(torch.cat([(z1 - z2).abs(), z1 * z2], dim=1)).squeeze(1)

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Same-location logit ``(B,)`` of two batches of patches."""
        return self.pair_logit(self.encode(x1), self.encode(x2))


class BiGANDiscriminator(nn.Module):
    """D(x, z): a conv trunk on x (no batch norm, dropout), an MLP on z, a joint MLP -> logit."""

    def __init__(self, code_size: int, patch_size: int, width: int) -> None:
        super().__init__()
        self.x_trunk = ConvTrunk(patch_size, width, norm=False, dropout=0.2)
        hidden = 4 * width
        self.x_fc = nn.Sequential(nn.Linear(self.x_trunk.out_features, hidden), nn.LeakyReLU(0.2, inplace=True))
        self.z_fc = nn.Sequential(nn.Linear(code_size, hidden), nn.LeakyReLU(0.2, inplace=True))
        self.joint = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_fc(self.x_trunk(x)), self.z_fc(z)], dim=1)).squeeze(1)


class BiGANEncoder(PatchEncoder):
    """Bidirectional GAN ([1]_ eq. 6; Donahue et al. 2017): encoder E, generator G, discriminator D.

    The prior p(z) is the standard normal N(0, I). ``encode`` is E.
    """

    kind = "bigan"

    def __init__(self, *, code_size: int = 128, patch_size: int = 128, mpp: float | None = 0.5, width: int = 32) -> None:
        super().__init__({"code_size": int(code_size), "patch_size": int(patch_size), "mpp": mpp, "width": int(width)})
        self.trunk = ConvTrunk(patch_size, width)
        self.fc = nn.Linear(self.trunk.out_features, code_size)
        self.generator = ConvDecoder(code_size, patch_size, width)
        self.discriminator = BiGANDiscriminator(code_size, patch_size, width)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G(z): codes ``(B, C)`` -> patches ``(B, 3, P, P)`` in [0, 1]."""
        return self.generator(z)

    def discriminate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """D(x, z): logit ``(B,)`` that the pair ``(x, z)`` is (x, E(x)) rather than (G(z), z)."""
        return self.discriminator(x, z)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of E and G (updated together, against D)."""
        return [*self.trunk.parameters(), *self.fc.parameters(), *self.generator.parameters()]


class SupervisedEncoder(PatchEncoder):
    """Features of a trained tissue classifier: global average pooling of ``forward_features``.

    ``patch_size``/``mpp`` are the classifier's ``config.input_size``/``config.mpp``; ``code_size``
    is its number of feature channels. The classifier's own preprocessing (its input
    normalisation, and its stain normalisation through :meth:`preprocess`) is kept.
    """

    kind = "supervised"

    def __init__(self, classifier: nn.Module) -> None:
        cfg = getattr(classifier, "config", None)
        if not hasattr(classifier, "forward_features") or cfg is None or not hasattr(cfg, "to_dict"):
            raise TypeError(
                f"SupervisedEncoder wraps a histoscope classifier (with .config and forward_features), got {type(classifier).__name__}"
            )
        with torch.no_grad():
            was = classifier.training
            classifier.eval()
            probe = classifier.forward_features(torch.full((1, 3, cfg.input_size, cfg.input_size), 0.5))
            classifier.train(was)
        super().__init__(
            {"code_size": int(probe.shape[1]), "patch_size": int(cfg.input_size), "mpp": cfg.mpp, "classifier": cfg.to_dict()}
        )
        self.classifier = classifier

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.classifier.forward_features(x), 1), 1)

    def preprocess(self) -> Callable[[np.ndarray], np.ndarray] | None:
        from .registry import stain_transform

        return stain_transform(self.classifier.config)


_CLASSES: dict[str, type[PatchEncoder]] = {
    "mean_rgb": MeanRGBEncoder,
    "vae": VAEEncoder,
    "contrastive": ContrastiveEncoder,
    "bigan": BiGANEncoder,
    "supervised": SupervisedEncoder,
}


def create_encoder(
    kind: EncoderKind | str,
    *,
    code_size: int | None = None,
    patch_size: int = 128,
    mpp: float | None = 0.5,
    width: int = 32,
    **kw: Any,
) -> PatchEncoder:
    """Build an untrained encoder (weights from the torch global generator: seed it first).

    Parameters
    ----------
    kind : {"mean_rgb", "vae", "contrastive", "bigan", "supervised"}
    code_size : int, optional
        C (default 128; always 3 for ``mean_rgb``).
    patch_size : int
        P >= 4.
    mpp : float or None
        Microns per pixel of the patches (recorded in the config).
    width : int
        Channels of the first conv stage (then 2x, 4x, capped at 4x).
    **kw
        ``supervised``: ``classifier=`` a trained classifier (e.g. from
        :func:`~histoscope.models.pretrained.load_pretrained`), or ``classifier_config=``
        a :class:`~histoscope.models.registry.ModelConfig` dict to build an untrained one
        (used when loading a saved encoder).

    Raises
    ------
    ValueError
        Unknown kind (lists the valid ones) or invalid sizes.
    """
    if kind not in _CLASSES:
        raise ValueError(f"unknown encoder kind {kind!r}; choose one of {list(ENCODER_KINDS)}")
    if kind == "supervised":
        classifier = kw.pop("classifier", None)
        ccfg = kw.pop("classifier_config", None)
        if kw:
            raise TypeError(f"unexpected arguments for a supervised encoder: {sorted(kw)}")
        if classifier is None:
            if ccfg is None:
                raise ValueError("a supervised encoder needs classifier= (a trained classifier) or classifier_config=")
            from .registry import ModelConfig, create_model

            cfg = ModelConfig.from_dict(ccfg)
            classifier = create_model(cfg.arch, **cfg.build_kwargs())
        return SupervisedEncoder(classifier)
    if kw:
        raise TypeError(f"unexpected arguments for a {kind} encoder: {sorted(kw)}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 4:
        raise ValueError(f"patch_size must be an int >= 4, got {patch_size!r}")
    if mpp is not None and not (float(mpp) > 0 and math.isfinite(float(mpp))):
        raise ValueError(f"mpp must be a positive number or None, got {mpp!r}")
    if kind == "mean_rgb":
        if code_size not in (None, 3):
            raise ValueError(f"the mean_rgb encoder has code_size 3, got code_size={code_size}")
        return MeanRGBEncoder(patch_size=int(patch_size), mpp=mpp)
    code_size = 128 if code_size is None else code_size
    if isinstance(code_size, bool) or not isinstance(code_size, (int, np.integer)) or code_size < 1:
        raise ValueError(f"code_size must be a positive int, got {code_size!r}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    return _CLASSES[kind](code_size=int(code_size), patch_size=int(patch_size), mpp=None if mpp is None else float(mpp), width=int(width))


def _from_config(config: dict[str, Any], *, where: str) -> PatchEncoder:
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in _CLASSES:
        raise ValueError(f"{where}: encoder config has kind {kind!r}; expected one of {list(ENCODER_KINDS)}")
    try:
        if kind == "supervised":
            return create_encoder("supervised", classifier_config=config["classifier"])
        return create_encoder(kind, code_size=config["code_size"], patch_size=config["patch_size"], mpp=config.get("mpp"), width=config.get("width", 32))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: invalid encoder config {config!r} ({exc})") from None


# ---------------------------------------------------------------------------- files
def save_encoder(encoder: PatchEncoder, path: str | os.PathLike[str], *, card: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write ``encoder`` to ``path`` (atomically): a ``torch.save`` of a plain dict.

    The dict is ``{"format": "histoscope-nic-encoder/1", "kind", "config", "state_dict",
    "card"}`` (tensors, strings, numbers only), readable with ``weights_only=True``.
    With ``card``, a JSON card ``<path>.json`` is written beside it with the file's
    ``sha256``, ``bytes``, ``config`` and the card's entries: exactly a bundle as
    :func:`load_encoder` expects it in ``models/weights/nic_<kind>.pt``. With ``half``,
    floating-point tensors are stored as float16 (half the file; loading casts them back to
    float32), as the bundled encoders are.

    Returns
    -------
    pathlib.Path
        The weights file.
    """
    if not isinstance(encoder, PatchEncoder):
        raise TypeError(f"save_encoder expects a PatchEncoder, got {type(encoder).__name__}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(encoder.config, default=str))  # JSON-able, plain types
    payload = {
        "format": ENCODER_FORMAT,
        "kind": encoder.kind,
        "config": config,
        "state_dict": {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu().clone()) for k, v in encoder.state_dict().items()},
        "card": json.loads(json.dumps(card or {}, default=str)),
    }
    tmp = p.with_name(f".{p.name}.partial")
    torch.save(payload, tmp)
    os.replace(tmp, p)
    if card is not None:
        meta = {"name": p.stem, "kind": encoder.kind, "config": config, "sha256": file_sha256(p), "bytes": p.stat().st_size, **card}
        jtmp = p.with_name(f".{p.stem}.json.partial")
        jtmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(jtmp, p.with_suffix(".json"))
        _write_text(p.with_suffix(".md"), render_encoder_card(meta))
    return p


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_encoder_card(card: dict[str, Any]) -> str:
    """The readable model card (Markdown) of an encoder's JSON card."""
    cfg = card.get("config", {})
    hist = card.get("history") or {}
    last = {k: v[-1] for k, v in hist.items() if isinstance(v, list) and v and k not in ("epoch", "seconds")}
    lines = [
        f"# Encoder card: `{card.get('name')}`",
        "",
        f"- Kind: `{cfg.get('kind')}` (Neural Image Compression encoder); code length C = {cfg.get('code_size')}; "
        f"patches of {cfg.get('patch_size')} px at {cfg.get('mpp')} um/px, RGB in [0, 1]; trunk width {cfg.get('width')}.",
        f"- Weights: `{card.get('name')}.pt`, {card.get('bytes', 0):,} bytes, SHA-256 `{card.get('sha256')}` (checked on load).",
        f"- Load: `histoscope.models.nic.load_encoder({str(card.get('name', '')).removeprefix('nic_')!r})`; "
        f"use: `histoscope nic compress SLIDE --encoder {str(card.get('name', '')).removeprefix('nic_')}`.",
        "",
        "## Data",
        f"- {card.get('patches', 'n/a')} patches sampled in tissue (tissue mask, >= 50% tissue) of: "
        + ", ".join(f"`{d}`" for d in card.get("data", [])) + ".",
        "- Licences (see ../shared/data/MANIFEST.md): CMU-1-Small-Region (OpenSlide test data, redistributed freely), "
        "TCGA-CR-7395 (TCGA open access, NIH GDC), MoNuSeg fields (CC BY-NC-SA 4.0, images from TCGA). Research use.",
        "- No labels are used.",
        "",
        "## Training",
        f"- Command: `{card.get('command')}`",
        f"- Seed {card.get('seed')}; settings {cfg.get('train')}.",
        f"- Last epoch: " + (", ".join(f"{k} {v:.4g}" for k, v in last.items()) if last else "n/a") + ".",
        "",
        "## Evaluation (the NIC paper's Table 1: frozen encoder + MLP on a labelled patch task)",
    ]
    tm = card.get("test_metrics")
    if tm:
        lines += [f"- Command: `{tm.get('command')}`", f"- Task: {tm.get('task')}", "",
                  "| " + " | ".join(tm["columns"]) + " |", "|" + "---|" * len(tm["columns"]),
                  "| " + " | ".join(str(int(v)) if c in ("code_size", "n_test") else f"{v:.3f}" if isinstance(v, float) else str(v)
                                    for c, v in zip(tm["columns"], tm["row"])) + " |"]
    else:
        lines.append("- Not evaluated yet (`histoscope nic evaluate-encoders --encoder FILE --record`).")
    lines += ["", "## Limits",
              "- Trained for minutes on a CPU on a few thousand patches of a dozen images: a small, general-purpose H&E encoder",
              "  for compression experiments, not a foundation model. For research use, not diagnosis.", ""]
    return "\n".join(lines)


def record_encoder_metrics(path: str | os.PathLike[str], test_metrics: dict[str, Any]) -> Path:
    """Add ``test_metrics`` to the JSON card beside an encoder file and re-render its Markdown card.

    The weights file (and so its SHA-256) is untouched.
    """
    p = Path(path)
    card_path = p.with_suffix(".json")
    card = _read_card(card_path)
    card["test_metrics"] = json.loads(json.dumps(test_metrics, default=str))
    _write_text(card_path, json.dumps(card, indent=2, default=str))
    _write_text(p.with_suffix(".md"), render_encoder_card(card))
    return card_path


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable encoder card ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: an encoder card must be a JSON object, got {type(card).__name__}")
    return card


def _verify(weights: Path, card: dict[str, Any], card_path: Path) -> None:
    if not weights.is_file():
        raise ModelFileError(f"{weights}: encoder weights missing (its card {card_path.name} is there)")
    expected = card.get("sha256")
    if not isinstance(expected, str):
        raise ModelFileError(f"{card_path}: the card has no 'sha256' of {weights.name}")
    digest = file_sha256(weights)
    if digest != expected:
        raise ModelFileError(
            f"{weights}: checksum {digest[:12]}... does not match its card {card_path.name} ({expected[:12]}...); "
            "the file is corrupt or was modified: restore it (reinstall histoscope) or re-export it"
        )


def _load_file(path: Path, card: dict[str, Any] | None, device: str | torch.device) -> PatchEncoder:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - say which file is refused, never a deep traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelFileError(
            f"{path}: not a histoscope encoder file, or not loadable safely with weights_only=True "
            f"({exc.__class__.__name__}: {first[:200]})"
        ) from None
    if isinstance(payload, dict) and "format" in payload:
        if payload["format"] != ENCODER_FORMAT:
            raise ModelFileError(f"{path}: unsupported encoder format {payload['format']!r} (this histoscope reads {ENCODER_FORMAT!r})")
        config, state = payload.get("config"), payload.get("state_dict")
        file_card = payload.get("card") or {}
    elif isinstance(payload, dict) and card is not None and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        config, state, file_card = card.get("config"), payload, {}  # a bare state dict bundled with its card
    else:
        what = f"a dict with keys {sorted(map(str, payload))[:6]}" if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(f"{path}: not a histoscope encoder file (expected a dict with format {ENCODER_FORMAT!r}, got {what})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: the encoder file has no state_dict of tensors")
    encoder = _from_config(config, where=str(path))  # type: ignore[arg-type]
    own = encoder.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        missing = sorted(set(own) - set(state))[:3]
        bad = [k for k in own if k in state and own[k].shape != state[k].shape][:3]
        raise ModelFileError(f"{path}: weights do not fit a {encoder.kind} encoder of config {config} (missing {missing}, shape mismatch {bad})")
    encoder.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()})
    encoder.card = {**file_card, **(card or {})}
    return encoder.to(device).eval()


def load_encoder(name_or_path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> PatchEncoder:
    """An encoder in eval mode, by bundled name or from a file written by :func:`save_encoder`.

    Parameters
    ----------
    name_or_path : str or path
        A kind (``"vae"``, also ``"nic_vae"``): the bundled ``models/weights/nic_<kind>.pt``,
        whose SHA-256 is checked against its card ``nic_<kind>.json`` before loading.
        ``"mean_rgb"`` needs no file (P = 128 at 0.5 um/px unless bundled).
        ``"supervised"`` without a bundle is the feature extractor of the bundled
        ``"colorectal_grader"`` classifier. Otherwise a path; when a ``.json`` card with a
        ``sha256`` lies beside it, the checksum is verified too.
    device : str or torch.device

    Raises
    ------
    ValueError
        Unknown name, missing file, checksum mismatch, a file that is not an encoder
        (or that ``weights_only=True`` refuses, e.g. a pickled object): the message names
        the file.
    """
    device = resolve_device(device)
    name = os.fspath(name_or_path)
    kind = name[4:] if name.startswith("nic_") and name[4:] in ENCODER_KINDS else name
    if kind in ENCODER_KINDS and not os.path.exists(name):
        weights = bundled_encoder_path(kind)
        card_path = weights.with_suffix(".json")
        if card_path.is_file():
            card = _read_card(card_path)
            _verify(weights, card, card_path)
            return _load_file(weights, card, device)
        if kind == "mean_rgb":
            return create_encoder("mean_rgb").to(device).eval()
        if kind == "supervised":
            from .pretrained import load_pretrained

            enc = SupervisedEncoder(load_pretrained(DEFAULT_SUPERVISED_MODEL))
            enc.card = {"source": f"features of the bundled {DEFAULT_SUPERVISED_MODEL!r} classifier"}
            return enc.to(device).eval()
        raise ModelFileError(
            f"no bundled {kind} encoder: {card_path} and {weights.name} are not installed. Train one "
            "(histoscope.train.nic.train_encoder) and save it with save_encoder, then load it by path"
        )
    p = Path(name)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such encoder file, and not an encoder name (bundled names: {list(ENCODER_KINDS)})")
    card_path = p.with_suffix(".json")
    card = None
    if card_path.is_file() and card_path != p:
        card = _read_card(card_path)
        if "sha256" in card:
            _verify(p, card, card_path)
    return _load_file(p, card, device)
