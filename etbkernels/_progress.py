"""A progress bar when tqdm is installed, a silent pass-through otherwise."""
from __future__ import annotations


def progress(iterable, **kwargs):
    """``iterable`` wrapped in a tqdm bar (shown on a terminal only); unchanged without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return iterable
    kwargs.setdefault("disable", None)  # shown on a terminal, silent in logs
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)
