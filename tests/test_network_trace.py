"""The tracer (etbkernels/network/trace.py, build.py): what it refuses, naming the node and its source
line, and when its cache is reused or renewed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import etbkernels
from etbkernels.network import trace as tr


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:  # depends on the input's values
            return self.fc(x)
        return -self.fc(x)


class InPlaceOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x.relu_()
        return self.fc(x)


class InPlaceShared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        z = F.relu(y, inplace=True)  # y is read again below: it was changed under it
        return y + z


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.fc(x))


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x) * self.b(x)


class BatchMix(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).view(-1)  # merges the samples


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize("model, says", [
    (ControlFlow(), ["cannot be traced", "control flow", "test_network_trace.py:"]),
    (InPlaceOnInput(), ["node 'relu_'", "in place", "the model input", "test_network_trace.py:"]),
    (InPlaceShared(), ["node 'relu'", "in place", "used elsewhere", "test_network_trace.py:"]),
    (Tanh(), ["node 'tanh'", "has no bound operator", "test_network_trace.py:"]),
    (Product(), ["node 'mul'", "product of two tensors", "test_network_trace.py:"]),
    (BatchMix(), ["node 'view'", "batch", "test_network_trace.py:"]),
    (TwoOutputs(), ["returns tuple"]),
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh()), ["model[1] = Tanh", "supported"]),
], ids=["control_flow", "inplace_input", "inplace_shared", "tanh", "product", "batch_mix", "two_outputs",
        "tanh_module"])
@pytest.mark.parametrize("method", ["ibp", "etb", "crown"])
def test_refused_with_node_and_line(model, says, method):
    with pytest.raises(ValueError) as e:
        etbkernels.bounds(model.eval(), torch.rand(2, 4), 0.1, method=method)
    for s in says:
        assert s in str(e.value), f"{s!r} not in {e.value}"


def test_cache_reused_until_the_model_changes():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.rand(2, 4)
    first = tr.cached_trace(model, x)
    assert tr.cached_trace(model, x) is first  # same structure, mode, parameters and input shape
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an in-place update (a training step): the trace stays, the ops read it
    assert tr.cached_trace(model, x) is first
    b = etbkernels.bounds(model, x, 0.1, method="ibp")
    want = etbkernels.bounds(nn.Sequential(*[m for m in model]).eval(), x, 0.1, method="ibp")
    torch.testing.assert_close(b.lower, want.lower)
    renewers = [
        lambda: model.train(),                                             # train/eval mode
        lambda: setattr(model[0], "weight", nn.Parameter(torch.randn(5, 4))),  # a parameter replaced
        lambda: model.append(nn.ReLU()),                                   # structure
    ]
    seen = first
    for change in renewers:
        change()
        now = tr.cached_trace(model, x)
        assert now is not seen
        seen = now
    model.double()
    assert tr.cached_trace(model, x.double()) is not seen  # the input's dtype


def test_traced_graph_reads_current_weights_with_gradients():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.rand(2, 4)
    etbkernels.bounds(model, x, 0.1)  # traced and cached
    b = etbkernels.bounds(model, x, 0.1, method="crown-ibp")
    (b.upper - b.lower).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_bounds_options_change_how_not_what(monkeypatch):
    """BoundsOptions (the lazy tail, full CROWN's windows) give the same bounds, the other way (each
    switched-off path is checked not to run); a wrong type is refused."""
    from etbkernels.network import BoundsOptions, crown_windows, etb_tail
    from etbkernels.network.models import mlp, small_cnn
    calls = []
    for mod, name in ((crown_windows, "crown_neurons_windowed"), (etb_tail, "lazy_tail")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    monkeypatch.setattr("etbkernels.network.etb.lazy_tail", etb_tail.lazy_tail)
    torch.manual_seed(0)
    for model, x, kw in [(mlp((12, 30, 30, 5)).double().eval(), torch.rand(3, 12, dtype=torch.float64), {}),
                         (small_cnn(in_dim=12, classes=4).double().eval(), torch.rand(2, 1, 12, 12, dtype=torch.float64),
                          {"method": "crown"})]:
        calls.clear()
        a = etbkernels.bounds(model, x, 0.05, **kw)
        assert calls, "the default path did not take the lazy tail / windows"
        calls.clear()
        b = etbkernels.bounds(model, x, 0.05, options=BoundsOptions(lazy_tail=False, conv_windows=False), **kw)
        assert not calls, calls
        torch.testing.assert_close(a.lower, b.lower, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.upper, b.upper, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="options must be a BoundsOptions"):
        etbkernels.bounds(model, x, 0.05, options={"lazy_tail": False})
    with pytest.raises(TypeError, match="lazy_tail must be a bool"):
        BoundsOptions(lazy_tail="no")
