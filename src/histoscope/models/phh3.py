"""The PHH3 paper's candidate classifiers (Tellez et al., section III): CNN1 (artifact vs
non-artifact) and CNN2 (mitosis vs non-mitosis) on PHH3 candidate patches.

Five 3x3 convolution + 2x2 max-pool pairs with 64, 128, 256, 512, 1024 filters, a dense layer
of 2048 units, dropout 0.5 and a dense layer of 2 (all channel counts times the width factor,
so that the network trains on a CPU; batch normalisation optional).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import InputNormalization, ModelConfig, register_model

__all__ = ["Phh3CNN", "PHH3_FILTERS"]

PHH3_FILTERS = (64, 128, 256, 512, 1024)


class Phh3CNN(nn.Module):
    def __init__(self, config: ModelConfig, *, width: float = 1.0, dropout: float = 0.5, batch_norm: bool = True) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if config.input_size < 32:
            raise ValueError(f"the PHH3 CNN needs inputs of at least 32 px (five 2x2 poolings), got {config.input_size}")
        self.config = config
        self.normalize = InputNormalization(config)
        layers: list[nn.Module] = []
        cin = 3
        for f in PHH3_FILTERS:
            c = max(1, round(f * width))
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        side = config.input_size // 32
        hidden = max(1, round(2048 * width))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, config.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.config.input_size, self.config.input_size):
            raise ValueError(f"expected {self.config.input_size} x {self.config.input_size} patches, got {tuple(x.shape[-2:])}")
        return self.classifier(self.head(self.forward_features(x)))


@register_model("phh3_cnn")
def phh3_cnn(config: ModelConfig, *, width: float = 1.0, dropout: float = 0.5, batch_norm: bool = True) -> Phh3CNN:
    """CNN1 / CNN2 of the PHH3 reference standard (five conv + max-pool pairs, dense 2048)."""
    return Phh3CNN(config, width=width, dropout=dropout, batch_norm=batch_norm)


phh3_cnn.default_input_size = 64  # type: ignore[attr-defined]
