"""Parsing: folded layers equal the unfolded modules; each op's transpose is its adjoint; errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from etbkernels.network import Normalize, bounds, parse_model
from test_network_reference import _bn_eval, tiny_cnn, tiny_mlp

torch.manual_seed(3)


def _forward(net, x):
    z = x
    for k, stage in enumerate(net.stages):
        if k:
            z = torch.relu(z)
        for op in stage:
            z = op.forward(z)
    return z


@pytest.mark.parametrize("make,shape", [(tiny_mlp, (4, 12)), (tiny_cnn, (4, 2, 7, 7))])
def test_folding_equals_modules(make, shape):
    model = make()
    x = torch.randn(shape, dtype=torch.float64)
    net = parse_model(model, shape[1:], x)
    torch.testing.assert_close(_forward(net, x), model(x))


def test_bn_and_normalize_are_folded():
    model = nn.Sequential(Normalize([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]), nn.Conv2d(3, 4, 3),
                          _bn_eval(nn.BatchNorm2d(4)), nn.ReLU(), nn.Flatten(), _bn_eval(nn.BatchNorm1d(4 * 3 * 3)),
                          nn.Linear(36, 5), _bn_eval(nn.BatchNorm1d(5))).double()
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    net = parse_model(model, (3, 5, 5), x)
    names = [[type(op).__name__ for op in st] for st in net.stages]
    # Normalize before a padded-or-not conv stays (not folded into the conv); BN after conv/linear folds
    assert names == [["ChannelAffineOp", "ConvOp"], ["FlattenOp", "LinearOp"]]
    torch.testing.assert_close(_forward(net, x), model(x))


def test_avgpool_and_grouped_dilated_conv_transposes_are_adjoints():
    model = tiny_cnn()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    net = parse_model(model, (2, 7, 7), x)
    for stage in net.stages:
        for op in stage:
            u = torch.randn((3,) + tuple(op.in_shape), dtype=torch.float64)
            v = torch.randn((3,) + tuple(op.out_shape), dtype=torch.float64)
            lhs = (op.linear(u) * v).sum()
            rhs = (u * op.transpose(v)).sum()
            torch.testing.assert_close(lhs, rhs)
            assert op.linear(u).shape[1:] == tuple(op.out_shape)
    # odd sizes with stride 2 need output_padding in conv_transpose
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    net = parse_model(nn.Sequential(conv), (2, 8, 8), x)
    op = net.stages[0][0]
    u, v = torch.randn(1, 2, 8, 8, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close((op.linear(u) * v).sum(), (u * op.transpose(v)).sum())


@pytest.mark.parametrize("conv,hw", [
    (nn.Conv2d(1, 16, 4, stride=2), 28),              # the small CNN's first layer
    (nn.Conv2d(1, 5, 3, stride=2, padding=1), 9),     # odd size: output_padding in conv_transpose
    (nn.Conv2d(1, 4, 3, stride=(3, 2), padding=(2, 0), dilation=2), 13),
    (nn.Conv2d(1, 3, 2, stride=2), 1 + 2 * 3),
])
def test_single_channel_strided_conv_transposes_by_fold(conv, hw):
    """Such convs take the matmul + F.fold transpose: the adjoint of the conv, equal to conv_transpose2d,
    with gradients, on channels-last and contiguous rows."""
    conv = conv.double()
    x = torch.randn(2, 1, hw, hw + 1, dtype=torch.float64)
    op = parse_model(nn.Sequential(conv), (1, hw, hw + 1), x).stages[0][0]
    assert op.transpose_by_fold
    v = torch.randn((3,) + tuple(op.out_shape), dtype=torch.float64, requires_grad=True)
    u = torch.randn((3,) + tuple(op.in_shape), dtype=torch.float64)
    t = op.transpose(v.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close((op.linear(u) * v).sum(), (u * t).sum())
    want = F.conv_transpose2d(v, op.weight, None, op.stride, op.padding, op.output_padding, op.groups, op.dilation)
    torch.testing.assert_close(t, want)
    torch.testing.assert_close(op.transpose(v), want)
    assert torch.autograd.gradcheck(op.transpose, (v[:1].detach().requires_grad_(),))
    multi = parse_model(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2).double()), (3, 9, 9),
                        torch.randn(1, 3, 9, 9, dtype=torch.float64)).stages[0][0]
    assert not multi.transpose_by_fold  # 3-channel input: conv_transpose2d was faster there


@pytest.mark.parametrize("layer,match", [
    (nn.MaxPool2d(2, ceil_mode=True), "MaxPool2d"),
    (nn.Tanh(), "Tanh"),
    (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
    (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
    (nn.BatchNorm2d(1), "training mode"),
])
def test_unsupported_layer_named(layer, match):
    model = nn.Sequential(nn.Sequential(layer), nn.Flatten(), nn.LazyLinear(2) if False else nn.Identity())
    with pytest.raises(ValueError, match=match) as e:
        bounds(model, torch.rand(1, 1, 4, 4), 0.1)
    assert "model[0][0]" in str(e.value) and "supported" in str(e.value)


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.rand(2, 3)
    with pytest.raises(TypeError, match="model must be an nn.Module, got function"):
        bounds(lambda t: t, x, 0.1)
    with pytest.raises(ValueError, match="in_features"):
        bounds(model, torch.rand(2, 4), 0.1)
    with pytest.raises(ValueError, match="method"):
        bounds(model, x, 0.1, method="lirpa")
    with pytest.raises(ValueError, match="mask"):
        bounds(model, x, 0.1, mask="foo")
    with pytest.raises(ValueError, match="center_at"):
        bounds(model, x, 0.1, center_at="middle")
    with pytest.raises(ValueError, match="method='etb' only"):
        bounds(model, x, 0.1, method="ibp", mask="ibp")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        bounds(model, x, -0.1)
    with pytest.raises(ValueError, match="does not broadcast"):
        bounds(model, x, torch.ones(4))
    with pytest.raises(ValueError, match="spec must be"):
        bounds(model, x, 0.1, spec=torch.ones(2, 3))
    with pytest.raises(ValueError, match="batched"):
        bounds(model, torch.rand(3), 0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        bounds(model, torch.ones(2, 3, dtype=torch.int64), 0.1)
    with pytest.raises(TypeError, match="model parameter"):
        bounds(model, x.double(), 0.1)
    with pytest.raises(ValueError, match="mask\\[0\\]"):
        bounds(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), x, 0.1, mask=[torch.ones(2, 3)])
