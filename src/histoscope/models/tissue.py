"""Tissue classifiers: the colorectal paper's three CNNs (torchvision, from scratch) and a small default.

Every model takes ``(B, 3, H, W)`` float in [0, 1] and normalises inside (``config.mean`` /
``config.std``), so callers never have to remember the preprocessing.

References
----------
.. [1] Kim et al., colorectal tissue grading with ResNet-50, DenseNet-121 and Inception-v3
       (see ../shared/DESIGN.md).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import InputNormalization, ModelConfig, register_model

__all__ = ["TissueNet", "SmallCNN"]


class TissueNet(nn.Module):
    """A backbone (features to a ``(B, C, h, w)`` map) + global average pooling + linear head."""

    def __init__(self, config: ModelConfig, features: nn.Module, channels: int, *, dropout: float = 0.0, aux: nn.Module | None = None, aux_from: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, config.num_classes)
        self.aux = aux
        self._aux_from = aux_from
        self.normalize = InputNormalization(config)
        self._aux_out: torch.Tensor | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> the last feature map ``(B, C, h, w)``."""
        return self.features(self.normalize(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map -> logits ``(B, K)`` (global average pooling + linear)."""
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def aux_logits(self) -> torch.Tensor | None:
        """Inception-v3's auxiliary logits from the last training forward (None otherwise)."""
        return self._aux_out


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Sequential):
    """A CPU-friendly backbone: a stride-2 stem, then three stages of two 3x3 conv-BN-ReLU.

    Widths ``w, 2w, 4w, 8w`` (w = 24 by default); about 60 M multiply-adds per 64 px patch.
    """

    def __init__(self, width: int = 24) -> None:
        w = width
        super().__init__(
            _conv_bn(3, w, stride=2),
            _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w), _conv_bn(8 * w, 8 * w),
        )  # fmt: skip
        self.out_channels = 8 * w


@register_model("small_cnn")
def small_cnn(config: ModelConfig, *, width: int = 24, dropout: float = 0.2) -> TissueNet:
    """The CPU-friendly default (~0.7 M parameters at width 24); trains in minutes on 2 cores."""
    backbone = SmallCNN(width)
    return TissueNet(config, backbone, backbone.out_channels, dropout=dropout)


small_cnn.default_input_size = 64  # type: ignore[attr-defined]


@register_model("resnet50")
def resnet50(config: ModelConfig) -> TissueNet:
    """torchvision ResNet-50, randomly initialised (He et al. 2016)."""
    from torchvision.models import resnet50 as tv

    m = tv(weights=None)
    features = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return TissueNet(config, features, 2048)


resnet50.default_input_size = 96  # type: ignore[attr-defined]


@register_model("densenet121")
def densenet121(config: ModelConfig) -> TissueNet:
    """torchvision DenseNet-121, randomly initialised (Huang et al. 2017)."""
    from torchvision.models import densenet121 as tv

    m = tv(weights=None)
    features = nn.Sequential(m.features, nn.ReLU(inplace=True))
    return TissueNet(config, features, 1024)


densenet121.default_input_size = 96  # type: ignore[attr-defined]


class _InceptionFeatures(nn.Module):
    """Inception-v3 up to Mixed_7c; stores the auxiliary logits (after Mixed_6e) while training."""

    def __init__(self, m: nn.Module, owner_ref: list) -> None:
        super().__init__()
        names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
                 "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]  # fmt: skip
        self.stem = nn.Sequential(*[getattr(m, n) for n in names])
        self.AuxLogits = m.AuxLogits
        self.tail = nn.Sequential(m.Mixed_7a, m.Mixed_7b, m.Mixed_7c)
        self._owner = owner_ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        owner = self._owner[0]
        if self.training and self.AuxLogits is not None:
            owner._aux_out = self.AuxLogits(x)
        else:
            owner._aux_out = None
        return self.tail(x)


@register_model("inception_v3")
def inception_v3(config: ModelConfig, *, aux_logits: bool = True) -> TissueNet:
    """torchvision Inception-v3, randomly initialised (Szegedy et al. 2016), with its auxiliary head.

    The auxiliary head needs 299 px inputs (its 5x5 pooling and 5x5 convolution on the
    17x17 grid); at smaller ``input_size`` (the network itself runs from 75 px) it is left out
    with a logged note. RMSProp and label smoothing are chosen by the training engine.
    """
    import logging

    from torchvision.models import inception_v3 as tv

    if config.input_size < 75:
        raise ValueError(f"inception_v3 needs input_size >= 75, got {config.input_size}")
    if aux_logits and config.input_size < 299:
        logging.getLogger(__name__).info(
            "inception_v3: input %d px < 299 px, the auxiliary head is left out", config.input_size
        )
        aux_logits = False
    m = tv(weights=None, aux_logits=True, init_weights=True, num_classes=config.num_classes)
    if not aux_logits:
        m.AuxLogits = None
    owner: list = []
    features = _InceptionFeatures(m, owner)
    # torchvision's Inception expects inputs in [-1, 1]: normalise with 0.5 / 0.5 (and say so in the config)
    config.mean = config.std = (0.5, 0.5, 0.5)
    net = TissueNet(config, features, 2048, dropout=0.5)
    owner.append(net)
    return net


inception_v3.default_input_size = 299  # type: ignore[attr-defined]
