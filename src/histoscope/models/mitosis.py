"""The whole-slide mitosis paper's all-convolutional CNN (Tellez et al., Table II), with width factor.

Layers (valid padding throughout, leaky ReLU)::

    3x3 conv 32   | 3x3 conv 32 stride 2 | 3x3 conv 64 | 3x3 conv 64 stride 2 |
    3x3 conv 128  | 3x3 conv 128 | 3x3 conv 256 | 3x3 conv 256 |
    k x k conv 512 (k = 14 for 100 px inputs, 5 for 64 px) | dropout | 1x1 conv -> 2 classes

Every channel count is multiplied by the width factor ``gamma`` (the paper distils into
students of gamma < 1).  Because there is no padding and no pooling, the same weights run
*densely*: a ``(B, 3, H, W)`` input gives a ``(B, 2, (H - R) // 4 + 1, (W - R) // 4 + 1)`` logit
map (S = input size) whose value at ``(i, j)`` equals the patch prediction for the patch
whose top-left corner is at ``(4 i, 4 j)`` (``R`` = :attr:`MitosisNet.receptive_field`, which
can be a few pixels less than S) — see :meth:`MitosisNet.forward_dense` and
:func:`histoscope.infer.dense`.

Batch normalisation (an option, on by default: it makes training from scratch on a CPU
budget converge in a few epochs) is a per-channel affine map at inference, so dense and
patch-wise evaluation stay identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .registry import InputNormalization, ModelConfig, register_model

__all__ = ["MitosisNet", "TABLE_II", "OUTPUT_STRIDE", "STRIDE2_FIRST", "head_kernel"]

#: (output channels, stride) of the 3x3 layers of Table II, before the width factor.
TABLE_II: tuple[tuple[int, int], ...] = ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 1), (256, 1), (256, 1))
#: Total stride of the network: one dense output per 4 input pixels.
OUTPUT_STRIDE = 4
#: Strides of the one-pixel paper's variant: stride-(2, 2) convolutions in the first two layers.
STRIDE2_FIRST: tuple[int, ...] = (2, 2, 1, 1, 1, 1, 1, 1)


def head_kernel(input_size: int, layers: tuple[tuple[int, int], ...] = TABLE_II) -> int:
    """Spatial size left after the 3x3 layers (the side of the k x k 512-filter layer)."""
    s = input_size
    for _, stride in layers:
        s = (s - 3) // stride + 1
        if s < 1:
            raise ValueError(f"input size {input_size} is too small for the mitosis CNN")
    return s


def _scaled(channels: int, gamma: float) -> int:
    return max(1, int(round(channels * gamma)))


class MitosisNet(nn.Module):
    """Table II of the whole-slide mitosis paper, fully convolutional.

    Parameters
    ----------
    config : ModelConfig
        ``input_size`` sets the training patch side (100 in the paper, 64 for the 64 px
        variant); ``num_classes`` is 2 (non-mitosis, mitosis).
    width : float
        The width factor gamma.
    dropout : float
    negative_slope : float
        Of the leaky ReLUs.
    batch_norm : bool
    strides : sequence of 8 ints, optional
        Strides of the eight 3x3 layers (Table II: ``1, 2, 1, 2, 1, 1, 1, 1``).
        :data:`STRIDE2_FIRST` (``2, 2, 1, 1, 1, 1, 1, 1``) is the one-pixel paper's variant
        with stride-(2, 2) convolutions in its first layers (the same total stride 4, so
        dense inference is unchanged), whose vulnerable pixels form a checkerboard.
    """

    def __init__(self, config: ModelConfig, *, width: float = 1.0, dropout: float = 0.5, negative_slope: float = 0.01, batch_norm: bool = True, strides: Sequence[int] | None = None) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        strides = tuple(int(s) for s in (strides if strides is not None else (s for _, s in TABLE_II)))
        if len(strides) != len(TABLE_II) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be {len(TABLE_II)} values of 1 or 2 (one per 3x3 layer), got {strides}")
        self.config = config
        self.width = width
        layers_spec = tuple((c, s) for (c, _), s in zip(TABLE_II, strides))
        self.layers_spec = layers_spec
        self.stride = int(np.prod(strides))
        k = head_kernel(config.input_size, layers_spec)
        self.head_kernel = k
        blocks: list[nn.Module] = []
        cin = 3
        for cout, stride in layers_spec:
            c = _scaled(cout, width)
            blocks += [nn.Conv2d(cin, c, 3, stride, 0, bias=not batch_norm)]
            if batch_norm:
                blocks.append(nn.BatchNorm2d(c))
            blocks.append(nn.LeakyReLU(negative_slope, inplace=True))
            cin = c
        self.features = nn.Sequential(*blocks)
        hidden = _scaled(512, width)
        self.head = nn.Sequential(
            nn.Conv2d(cin, hidden, k, 1, 0),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )
        self.classifier = nn.Conv2d(hidden, config.num_classes, 1)
        self.normalize = InputNormalization(config)

    @property
    def receptive_field(self) -> int:
        """Input pixels one output sees (at most the patch side: stride-2 valid convolutions
        may leave the patch's last rows and columns unused: 61 of 64, 97 of 100)."""
        r = self.head_kernel
        for _, stride in reversed(self.layers_spec):
            r = (r - 1) * stride + 3
        return r

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input in [0, 1] -> the last 3x3 feature map (Grad-CAM's layer)."""
        return self.features(self.normalize(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map -> logits ``(B, 2)`` for patch-sized inputs."""
        out = self.classifier(self.head(features))
        if out.shape[-2:] != (1, 1):
            raise ValueError(
                f"input larger than the {self.config.input_size} px patch the model was built for "
                f"gives a {tuple(out.shape[-2:])} map: use forward_dense for dense inference"
            )
        return torch.flatten(out, 1)

    def layers(self) -> list[nn.Module]:
        """The network as one flat chain (normalisation, convolutions, pointwise layers) whose
        composition is :meth:`forward_dense`: what the one-pixel audit's incremental scoring walks."""
        return [self.normalize, *self.features, *self.head, self.classifier]

    def get_classifier(self) -> nn.Conv2d:
        return self.classifier

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Logit map ``(B, 2, (H - R) // stride + 1, (W - R) // stride + 1)`` of any input >= S.

        ``R`` is :attr:`receptive_field`; element ``(i, j)`` equals ``forward`` of the patch
        whose top-left corner is at ``(stride * i, stride * j)``.
        """
        if x.shape[-1] < self.config.input_size or x.shape[-2] < self.config.input_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than the model's {self.config.input_size} px patch")
        return self.classifier(self.head(self.forward_features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2)`` for ``(B, 3, S, S)`` patches in [0, 1]."""
        if x.shape[-2:] != (self.config.input_size, self.config.input_size):
            raise ValueError(f"expected {self.config.input_size} x {self.config.input_size} patches, got {tuple(x.shape[-2:])}; use forward_dense for larger images")
        return self.forward_head(self.forward_features(x))


@register_model("mitosis_cnn")
def mitosis_cnn(config: ModelConfig, *, width: float = 1.0, dropout: float = 0.5, negative_slope: float = 0.01, batch_norm: bool = True, strides: Sequence[int] | None = None) -> MitosisNet:
    """Tellez et al.'s all-convolutional mitosis CNN (Table II); ``width`` is gamma."""
    if config.num_classes != 2:
        raise ValueError(f"the mitosis CNN has 2 classes (non-mitosis, mitosis), got num_classes={config.num_classes}")
    return MitosisNet(config, width=width, dropout=dropout, negative_slope=negative_slope, batch_norm=batch_norm, strides=strides)


mitosis_cnn.default_input_size = 100  # type: ignore[attr-defined]
