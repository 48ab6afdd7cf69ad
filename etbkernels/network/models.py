"""The MNIST-shaped architectures of the IBP / CROWN-IBP papers (docs/math.md), for tests and benchmarks.

small:  conv16 4x4/2, conv32 4x4/1, fc100, fc10
medium: conv32 3x3/1, conv32 4x4/2, conv64 3x3/1, conv64 4x4/2, fc512, fc512, fc10
large:  conv64 3x3/1 x2, conv128 3x3/2, conv128 3x3/1 x2 (padding 1), fc512, fc10
Small and medium use no padding (as in CROWN-IBP's IBP_small / IBP_medium).

Two graph models (bounded through the traced graph, not as a chain):
resnet:      conv16 3x3/2, two residual blocks of 16, conv32 3x3/2, a residual block of 32, fc100, fc10
             (no BatchNorm: training-mode BatchNorm has no bound; ~1.9e5 parameters on MNIST)
cnn_maxpool: conv16 3x3 (padding 1), max-pool 2, conv32 3x3 (padding 1), max-pool 2, fc100, fc10
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def mlp(widths: Sequence[int] = (784, 1024, 1024, 10)) -> nn.Sequential:
    """Flatten, then Linear layers of the given widths with ReLUs between them."""
    layers = [nn.Flatten()]
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[i], widths[i + 1]))
    return nn.Sequential(*layers)


def small_cnn(in_ch: int = 1, in_dim: int = 28, classes: int = 10) -> nn.Sequential:
    """IBP paper's small CNN."""
    d = _out(_out(in_dim, 4, 2, 0), 4, 1, 0)
    return nn.Sequential(nn.Conv2d(in_ch, 16, 4, 2), nn.ReLU(), nn.Conv2d(16, 32, 4, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * d * d, 100), nn.ReLU(), nn.Linear(100, classes))


def medium_cnn(in_ch: int = 1, in_dim: int = 28, classes: int = 10) -> nn.Sequential:
    """IBP paper's medium CNN."""
    d = _out(_out(_out(_out(in_dim, 3, 1, 0), 4, 2, 0), 3, 1, 0), 4, 2, 0)
    return nn.Sequential(nn.Conv2d(in_ch, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64 * d * d, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, classes))


def large_cnn(in_ch: int = 1, in_dim: int = 28, classes: int = 10, fc: int = 512) -> nn.Sequential:
    """IBP paper's large CNN (the ETB release used fc=200)."""
    d = _out(in_dim, 3, 2, 1)
    return nn.Sequential(nn.Conv2d(in_ch, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(128 * d * d, fc),
                         nn.ReLU(), nn.Linear(fc, classes))


class ResidualBlock(nn.Module):
    """``relu(x + conv2(relu(conv1(x))))`` with 3x3 convolutions that keep the shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


def resnet(in_ch: int = 1, in_dim: int = 28, classes: int = 10, width: int = 16) -> nn.Sequential:
    """A small residual network (see the module docstring)."""
    d = _out(_out(in_dim, 3, 2, 1), 3, 2, 1)
    return nn.Sequential(nn.Conv2d(in_ch, width, 3, 2, 1), nn.ReLU(), ResidualBlock(width), ResidualBlock(width),
                         nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(), ResidualBlock(2 * width), nn.Flatten(),
                         nn.Linear(2 * width * d * d, 100), nn.ReLU(), nn.Linear(100, classes))


def cnn_maxpool(in_ch: int = 1, in_dim: int = 28, classes: int = 10) -> nn.Sequential:
    """A CNN with max-pooling (see the module docstring)."""
    d = in_dim // 2 // 2
    return nn.Sequential(nn.Conv2d(in_ch, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, 1, 1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * d * d, 100), nn.ReLU(),
                         nn.Linear(100, classes))
