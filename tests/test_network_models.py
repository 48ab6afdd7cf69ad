"""The IBP-paper architectures parse and bound; the chunking keeps the estimated memory bounded."""
import pytest
import torch

from etbkernels.network import bounds, models, parse_model
from etbkernels.network.api import DEFAULT_CHUNK_BYTES
from etbkernels.network.etb import forward_numel_per_sample


@pytest.mark.parametrize("make", [models.small_cnn, models.medium_cnn, models.large_cnn])
def test_zoo_shapes_and_memory_estimate(make):
    model = make()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    net = parse_model(model, (1, 28, 28), x)
    per_sample = forward_numel_per_sample(net) * 4
    # patches keep even the large CNN far below the dense n * width (784 * 50176 floats)
    assert per_sample < 784 * 50176 * 4 / 4
    assert DEFAULT_CHUNK_BYTES // (3 * per_sample) >= 1


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
