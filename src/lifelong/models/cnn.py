"""A small convolutional network for C-channel images, e.g. 28x28 Fashion-MNIST or 8x8 digits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CNN(nn.Module):
    """Conv-ReLU-MaxPool blocks (one per entry of `channels`), then a hidden linear layer and a linear head.

    Pooling is skipped once the feature map is 1 pixel wide, so tiny inputs (8x8 digits) work too.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"CNN expects images shaped [C, H, W], got input shape {tuple(input_shape)}; use model 'mlp' "
                "for flat features"
            )
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out_c in channels:
            layers += [nn.Conv2d(c, out_c, kernel_size=3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out_c
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, num_classes)
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
