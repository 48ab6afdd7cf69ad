"""Robust training with ETB or IBP bounds: data, models, train loop, checkpoints, evaluation, plots.

The command line (``python -m etbkernels train|eval|plot``) is in :mod:`etbkernels.cli`; see
docs/training.md.
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, MODELS, build_model, load_dataset
from .evaluate import evaluate, markdown_table
from .loop import TrainConfig, train

__all__ = ["DATASETS", "MODELS", "TrainConfig", "build_model", "evaluate", "load_checkpoint", "load_dataset",
           "markdown_table", "save_checkpoint", "train"]
