"""The IBP-paper architectures parse and bound; the chunking keeps the estimated memory bounded."""
import pytest
import torch

from etbkernels.network import bounds, models, parse_model
from etbkernels.network.chunking import DEFAULT_CHUNK_BYTES
from etbkernels.network.etb import forward_numel_per_sample


@pytest.mark.parametrize("make", [models.small_cnn, models.medium_cnn, models.large_cnn])
def test_zoo_shapes_and_memory_estimate(make):
    model = make()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    net = parse_model(model, (1, 28, 28), x)
    per_sample = forward_numel_per_sample(net)
    widest = max(op.out_shape[0] * (op.out_shape[1] * op.out_shape[2] if len(op.out_shape) == 3 else 1)
                 for st in net.stages for op in st)
    # patches keep the largest tensor below the dense directions' n * widest layer
    assert per_sample < 784 * widest
    assert forward_numel_per_sample(net, total=True) >= per_sample
    assert DEFAULT_CHUNK_BYTES // (3 * 4 * per_sample) >= 1


@pytest.mark.parametrize("make", [models.small_cnn, models.medium_cnn])
def test_zoo_bounds_consistent(make):
    torch.manual_seed(0)
    model = make().double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        ibp = bounds(model, x, 0.01, method="ibp")
        etb = bounds(model, x, 0.01, center_at="linear")
        etb_i = bounds(model, x, 0.01, mask="ibp")
        etb_chunked = bounds(model, x, 0.01, center_at="linear", chunk_size=1)
    torch.testing.assert_close(etb.radius, etb_chunked.radius)
    torch.testing.assert_close(etb.center, etb_chunked.center)
    # random-init CNNs: IBP blows up with depth, ETB does not (on average; not per output)
    assert etb.radius.mean() < ibp.radius.mean() and etb_i.radius.mean() < ibp.radius.mean()
    torch.testing.assert_close(etb_i.center, model(x))


def test_mlp_builder():
    m = models.mlp((6, 5, 4, 3))
    assert m(torch.rand(2, 6)).shape == (2, 3)


@pytest.mark.parametrize("make", [models.small_cnn, models.medium_cnn, models.large_cnn, models.mlp])
@pytest.mark.parametrize("grad", [False, True])
def test_default_chunk_cpu_cache_cap(make, grad):
    """On CPU the forward path's largest per-chunk tensor stays near CPU_CACHE_CHUNK_BYTES (it
    was 1 GiB, which sent every elementwise pass to DRAM), GRAD_CACHE_FACTOR times that with
    gradients; elsewhere only the memory rule holds."""
    from etbkernels.network.chunking import (CACHE_TENSORS, CPU_CACHE_CHUNK_BYTES, GRAD_CACHE_FACTOR,
                                             forward_chunk as _forward_chunk)

    x = torch.rand(1, 1, 28, 28)
    net = parse_model(make(), (1, 28, 28), x)
    peak, total = forward_numel_per_sample(net), forward_numel_per_sample(net, total=grad)
    memory = max(1, DEFAULT_CHUNK_BYTES // (3 * total * 4))
    cpu, gpu = _forward_chunk(net, grad, 4, torch.device("cpu")), _forward_chunk(net, grad, 4, torch.device("cuda"))
    assert gpu == memory
    size = CACHE_TENSORS * peak * 4
    cached = max(1, CPU_CACHE_CHUNK_BYTES // size)
    assert cached == 1 or cached * size <= CPU_CACHE_CHUNK_BYTES < (cached + 1) * size
    assert cpu == min(memory, cached * GRAD_CACHE_FACTOR if grad else cached)
    assert cpu < memory  # every zoo model is capped: the rule changes something


@pytest.mark.parametrize("make", [models.small_cnn, models.medium_cnn])
def test_saved_graph_estimate_matches_the_saved_tensors(make, monkeypatch):
    """kept_samples sizes the kept graphs of mask="etb" by saved_numel_per_sample: within 10% of the
    bytes an output-only chunk's graph saves per sample (the parameters, shared, left out)."""
    from etbkernels.network import chunking
    from etbkernels.network.etb import saved_numel_per_sample
    from etbkernels.network.etb_tail import tail_start
    from etbkernels.nn import BoundedModel

    torch.manual_seed(0)
    model, B = make(), 8
    x, y = torch.rand(B, 1, 28, 28), torch.randint(0, 10, (B,))
    monkeypatch.setattr(chunking, "kept_samples", lambda *a: B)  # no chunk checkpointed
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        BoundedModel(model, method="etb", mask="etb", clip=(0.0, 1.0)).robust_loss(x, y, 0.1)
    net = parse_model(model, (1, 28, 28), x[:1])
    estimate = saved_numel_per_sample(net, tail_start(net, 10)) * 4
    assert 0.9 < estimate / (sum(saved.values()) / B) < 1.1
    monkeypatch.undo()
    assert chunking.kept_samples(net, 4, tail_start(net, 10)) == DEFAULT_CHUNK_BYTES // estimate
