"""Microbenchmarks with pytest-benchmark: the block ops against IBP, the naive reference and a
same-flops matmul, and ``bounds()`` per method on the model zoo.

    python -m bench run micro [--quick]       # runs this file, writes bench/results/micro.{json,md}
    python -m pytest bench/test_micro.py --benchmark-only [--quick] [--benchmark-save=NAME]

Each benchmark group compares like with like: one block shape and one direction (forward, or
forward + backward of the summed bounds), or one model and batch (no gradients). The block
groups' baseline is a matmul doing ETB's dominant flops (2 N m h n); the bounds groups' is IBP.
Every benchmarked call's result is checked (shapes, finite values, ordered bounds; sound methods
must contain the model's output), so a broken op fails here instead of timing garbage.
docs/benchmarks.md: the flops and floors, and how to compare a change against a saved run.
"""
from __future__ import annotations

import pytest
import torch

import etbkernels as E
from etbkernels import reference as R
from etbkernels.network import models
from etbkernels.testing import random_block

from .harness import block_flops

BLOCKS = {  # label: (N, n, h, m)
    "mlp 784-1024-10": (256, 784, 1024, 10),  # the paper's MLP block (784-1024-10)
    "small-cnn head 3200-100-10": (256, 3200, 100, 10),  # the small CNN's Flatten+Linear, ReLU, Linear
    "medium-cnn fc 1024-512-512": (16, 1024, 512, 512),  # the medium CNN's first two dense layers
}
QUICK_BLOCKS = {"tiny 64-96-32": (8, 64, 96, 32)}
BLOCK_METHODS = {"etb_block": "etb", "ibp_block": "ibp", "naive_ref": "naive", "same_flops_matmul": "matmul"}
NAIVE_MAX_BYTES = 800e6  # the naive reference materializes P, N x m x n floats

ZOO = {"mlp": (models.mlp, 8), "small-cnn": (models.small_cnn, 8), "medium-cnn": (models.medium_cnn, 8)}
QUICK_ZOO = {"small-cnn": (models.small_cnn, 2)}
BOUND_METHODS = {"ibp": dict(method="ibp"), "crown-ibp": dict(method="crown-ibp"),
                 "crown-forward": dict(method="crown-forward"), "etb mask=ibp": dict(mask="ibp"),
                 "etb mask=etb": dict(mask="etb"), "crown": dict(method="crown")}
SOUND = ("ibp", "crown-ibp", "crown-forward", "crown")
# full CROWN takes a backward pass per hidden neuron (seconds per call on a CNN): bench/crown_full.py times it
TOO_SLOW = {("small-cnn", "crown"), ("medium-cnn", "crown")}


def pytest_generate_tests(metafunc):
    quick = metafunc.config.getoption("quick", default=False)
    for arg, grid in (("block", QUICK_BLOCKS if quick else BLOCKS), ("zoo_model", QUICK_ZOO if quick else ZOO)):
        if arg in metafunc.fixturenames:
            metafunc.parametrize(arg, list(grid.items()), ids=list(grid))


def _block_call(method: str, shape, backward: bool):
    """The timed call for one block method, and its inputs' leaves (for the backward's gradients)."""
    N, n, h, m = shape
    if method == "same_flops_matmul":
        a, b = torch.randn(N * m, h), torch.randn(h, n)
        if not backward:
            c = torch.empty(N * m, n)  # preallocated: the baseline should not pay for page faults
            return (lambda: torch.mm(a, b, out=c)), []
        leaves = [a.requires_grad_(True), b.requires_grad_(True)]
        return (lambda: torch.mm(*leaves).sum()), leaves
    blk = random_block(N, n, h, m, dtype=torch.float32, eps=0.02, seed=1)
    fn = {"etb_block": E.etb_block, "ibp_block": E.ibp_block, "naive_ref": R.etb_block_ref}[method]
    if not backward:
        args = blk.args()
        return (lambda: fn(*args)), []
    leaves = [t.detach().clone().requires_grad_(True) for t in blk.args()]

    def loss():
        lower, upper = fn(*leaves)
        return (lower + upper).sum()
    return loss, leaves


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("method", list(BLOCK_METHODS))
def test_block(benchmark, block, method, direction):
    label, (N, n, h, m) = block
    if method == "naive_ref" and 4 * N * m * n > NAIVE_MAX_BYTES:
        pytest.skip("the naive reference's P would exceed 800 MB")
    backward = direction == "fwd+bwd"
    call, leaves = _block_call(method, (N, n, h, m), backward)
    if backward:
        def step():
            for t in leaves:
                t.grad = None
            call().backward()
            return [t.grad for t in leaves]
    else:
        step = call
    benchmark.group = f"block {label}, N {N}, {direction}"
    benchmark.extra_info.update(case=method, baseline=method == "same_flops_matmul",
                                flops=block_flops(BLOCK_METHODS[method], N, n, h, m, backward))
    out = benchmark(step)
    tensors = out if backward else ([out] if method == "same_flops_matmul" else list(out))
    assert all(bool(torch.isfinite(t).all()) for t in tensors)
    if backward:
        assert [t.shape for t in out] == [t.shape for t in leaves]
    elif method != "same_flops_matmul":
        assert out[0].shape == (N, m) and bool((out[0] <= out[1]).all())


@pytest.mark.parametrize("method", list(BOUND_METHODS))
def test_bounds(benchmark, zoo_model, method):
    name, (build, batch) = zoo_model
    if (name, method) in TOO_SLOW:
        pytest.skip("full CROWN on this model is timed by bench/crown_full.py")
    torch.manual_seed(0)
    model = build().eval()
    x = torch.rand(batch, 1, 28, 28)
    benchmark.group = f"bounds {name}, batch {batch}, no grad"
    benchmark.extra_info.update(case=method, baseline=method == "ibp")
    with torch.no_grad():
        b = benchmark(E.bounds, model, x, 0.1, **BOUND_METHODS[method])
        y = model(x)
    assert b.lower.shape == y.shape and bool((b.lower <= b.upper).all())
    if method in SOUND:
        tol = 1e-4 * (1 + y.abs())
        assert bool(((b.lower <= y + tol) & (y <= b.upper + tol)).all()), f"{method} does not contain model(x)"
