"""bounds() refuses models whose children do not describe their computation (issue 18).

The parser reads an ``nn.Sequential``'s children and their parameters; it never runs a forward.
A module used twice, a forward hook or pre-hook (on a module or global), a class that overrides
``forward`` (or what ``forward`` dispatches to, or ``__call__``), or a ``None`` child make the
model compute something else than the chain the parser sees, and every sound method used to
return intervals that ``model(x)`` escapes. Each is now a ValueError naming the module, for
every method. Legitimate look-alikes (a subclass that keeps the forward, backward hooks, weight
tying, parametrizations, nesting) still work.
"""
import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

import etbkernels
from etbkernels.network import Normalize, arguments, bounds, parse_model
from etbkernels.nn import BoundedModel

# every method, and ETB with each mask: all of them go through the parser
CONFIGS = [(m, {}) for m in arguments.METHODS if m != "etb"] + [("etb", {"mask": k}) for k in arguments.MASKS]
CONFIG_IDS = [m + (f"-mask={kw['mask']}" if kw else "") for m, kw in CONFIGS]


def _mlp_x():
    return torch.rand(4, 16)


def _img_x():
    return torch.rand(3, 1, 6, 6)


def _escapes(model, x, b) -> bool:
    y = model(x)
    return bool(((y < b.lower - 1e-5) | (y > b.upper + 1e-5)).any())


# ------------------------------------------------------------------------- refused constructs
# Each returns (model, x, what the message must say): the module's path, and what is wrong.
def reused_relu():
    relu = nn.ReLU()
    m = nn.Sequential(nn.Linear(16, 8), relu, nn.Linear(8, 8), relu, nn.Linear(8, 3))
    return m, _mlp_x(), ["model[3] (ReLU)", "used twice", "model[1]"]


def reused_linear():
    lin = nn.Linear(8, 8)
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(8, 3))
    return m, _mlp_x(), ["model[4] (Linear)", "used twice", "model[2]"]


def reused_nested_sequential():
    block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), block, block, nn.Linear(8, 3))
    return m, _mlp_x(), ["model[3] (Sequential)", "used twice", "model[2]"]


def reused_across_nesting():
    relu = nn.ReLU()
    m = nn.Sequential(nn.Linear(16, 8), relu, nn.Sequential(nn.Linear(8, 8), relu), nn.Linear(8, 3))
    return m, _mlp_x(), ["model[2][1] (ReLU)", "used twice", "model[1]"]


def forward_hook_on_layer():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    m[2].register_forward_hook(lambda mod, inp, out: out * 2)
    return m, _mlp_x(), ["model[2] (Linear)", "forward hook"]


def forward_pre_hook_on_layer():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    m[1].register_forward_pre_hook(lambda mod, inp: (inp[0] - 1,))
    return m, _mlp_x(), ["model[1] (ReLU)", "forward pre-hook"]


def forward_hook_on_model():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    m.register_forward_hook(lambda mod, inp, out: out + 1)
    return m, _mlp_x(), ["model (Sequential)", "forward hook"]


def forward_pre_hook_on_nested():
    inner = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
    inner.register_forward_pre_hook(lambda mod, inp: (inp[0] * 3,))
    m = nn.Sequential(inner, nn.Linear(8, 3))
    return m, _mlp_x(), ["model[0] (Sequential)", "forward pre-hook"]


def hook_on_skipped_layer():
    # Dropout/Identity are skipped by the parser: their hooks must not be
    m = nn.Sequential(nn.Linear(16, 8), nn.Identity(), nn.ReLU(), nn.Linear(8, 3))
    m[1].register_forward_hook(lambda mod, inp, out: -out)
    return m, _mlp_x(), ["model[1] (Identity)", "forward hook"]


class MySequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 1


class ReversedSequential(nn.Sequential):
    def __iter__(self):  # nn.Sequential.forward iterates self
        return reversed(list(self._modules.values()))


def sequential_subclass_forward():
    m = MySequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return m, _mlp_x(), ["model (MySequential)", "overrides forward", "nn.Sequential"]


def nested_sequential_subclass_forward():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), MySequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
    return m, _mlp_x(), ["model[2] (MySequential)", "overrides forward"]


def sequential_subclass_iter():
    m = ReversedSequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    return m, _mlp_x(), ["model (ReversedSequential)", "overrides __iter__"]


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class CallLinear(nn.Linear):
    def __call__(self, x):
        return super().__call__(x) * 2


class CallImplLinear(nn.Linear):
    def _call_impl(self, x):
        return super()._call_impl(x) * 2


class DoubledConv(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):  # nn.Conv2d.forward calls this
        return super()._conv_forward(x, weight, bias) * 2


def linear_subclass_forward():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), MyLinear(8, 3))
    return m, _mlp_x(), ["model[2] (MyLinear)", "overrides forward", "nn.Linear"]


def linear_subclass_call():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), CallLinear(8, 3))
    return m, _mlp_x(), ["model[2] (CallLinear)", "overrides __call__"]


def linear_subclass_call_impl():
    m = nn.Sequential(CallImplLinear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return m, _mlp_x(), ["model[0] (CallImplLinear)", "overrides _call_impl"]


def conv_subclass_conv_forward():
    m = nn.Sequential(DoubledConv(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    return m, _img_x(), ["model[0] (DoubledConv)", "overrides _conv_forward", "nn.Conv2d"]


def instance_forward():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    lin = m[2]
    lin.forward = lambda x: nn.Linear.forward(lin, x) * 2  # an instance attribute wins over the class's
    return m, _mlp_x(), ["model[2] (Linear)", "forward", "instance"]


def none_child():
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    m.add_module("3", None)  # nn.Sequential.forward would call None
    return m, _mlp_x(), ["model[3]", "None"]


# Refused: a hook or a replaced call is invisible to the traced forward; a None entry does not run.
REFUSED = [forward_hook_on_layer, forward_pre_hook_on_layer, forward_hook_on_model, forward_pre_hook_on_nested,
           hook_on_skipped_layer, linear_subclass_call, linear_subclass_call_impl, none_child]
# Bounded as they compute (the model is traced): reused modules, custom forwards, an instance's forward.
# The chain parser used to read these children-first, silently unsound; they stay here as soundness cases.
TRACED = [reused_relu, reused_linear, reused_nested_sequential, reused_across_nesting, sequential_subclass_forward,
          nested_sequential_subclass_forward, sequential_subclass_iter, linear_subclass_forward,
          conv_subclass_conv_forward, instance_forward]


def _assert_refused(model, x, says, method, kw):
    with pytest.raises(ValueError) as e:
        bounds(model, x, 0.05, method=method, **kw)
    msg = str(e.value)
    for s in says:
        assert s in msg, f"{s!r} not in {msg!r}"


def _assert_sound(model, x, method, kw, points=2000):
    """Sampled points of the box (half of them vertices) stay inside the bounds of a sound method; ETB's
    (not a certificate) are checked against the model's own output at the centre being finite."""
    b = bounds(model, x, 0.05, method=method, **kw)
    assert b.lower.shape == model(x).shape
    if method == "etb":
        assert torch.isfinite(b.lower).all() and torch.isfinite(b.upper).all()
        return
    g = torch.Generator().manual_seed(0)
    u = torch.rand((points,) + tuple(x.shape), generator=g) * 2 - 1
    u[: points // 2] = u[: points // 2].sign()
    with torch.no_grad():
        y = model((x + 0.05 * u).reshape((-1,) + tuple(x.shape[1:]))).reshape((points,) + tuple(b.lower.shape))
    assert bool(((y >= b.lower - 1e-5) & (y <= b.upper + 1e-5)).all())


@pytest.mark.parametrize("method,kw", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("make", REFUSED, ids=[f.__name__ for f in REFUSED])
def test_refused_for_every_method(make, method, kw):
    model, x, says = make()
    _assert_refused(model.eval(), x, says, method, kw)


@pytest.mark.parametrize("method,kw", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("make", TRACED, ids=[f.__name__ for f in TRACED])
def test_traced_constructs_are_bounded_as_they_compute(make, method, kw):
    model, x, _ = make()
    _assert_sound(model.eval(), x, method, kw)


# Every supported layer type: a subclass with its own forward (here: twice the output) is traced
# through; BatchNorm's forward branches on its input's shape, which tracing cannot follow: refused.
def _doubling(base):
    return type(f"Doubled{base.__name__}", (base,), {"forward": lambda self, x: base.forward(self, x) * 2})


def _bn(bn):
    return bn.eval()


def _normalize_subclass():
    # named Normalize: a duck-typed check would accept it by name
    cls = type("Normalize", (Normalize,), {"forward": lambda self, x: Normalize.forward(self, x) * 2})
    return cls([0.5], [0.25])


LAYER_SUBCLASSES = {  # base: (model with the doubling subclass at index 1, x)
    "Linear": lambda: (nn.Sequential(nn.Linear(16, 8), _doubling(nn.Linear)(8, 3)), _mlp_x()),
    "Conv2d": lambda: (nn.Sequential(nn.Identity(), _doubling(nn.Conv2d)(1, 2, 3), nn.Flatten()), _img_x()),
    "ReLU": lambda: (nn.Sequential(nn.Linear(16, 8), _doubling(nn.ReLU)(), nn.Linear(8, 3)), _mlp_x()),
    "Flatten": lambda: (nn.Sequential(nn.Conv2d(1, 2, 3), _doubling(nn.Flatten)(), nn.Linear(32, 3)), _img_x()),
    "BatchNorm1d": lambda: (nn.Sequential(nn.Linear(16, 8), _bn(_doubling(nn.BatchNorm1d)(8)), nn.ReLU(),
                                          nn.Linear(8, 3)), _mlp_x()),
    "BatchNorm2d": lambda: (nn.Sequential(nn.Conv2d(1, 2, 3), _bn(_doubling(nn.BatchNorm2d)(2)), nn.Flatten()),
                            _img_x()),
    "AvgPool2d": lambda: (nn.Sequential(nn.Conv2d(1, 2, 3), _doubling(nn.AvgPool2d)(2), nn.Flatten()), _img_x()),
    "Dropout": lambda: (nn.Sequential(nn.Linear(16, 8), _doubling(nn.Dropout)(0.0), nn.Linear(8, 3)), _mlp_x()),
    "Identity": lambda: (nn.Sequential(nn.Linear(16, 8), _doubling(nn.Identity)(), nn.Linear(8, 3)), _mlp_x()),
    "Normalize": lambda: (nn.Sequential(nn.Identity(), _normalize_subclass(), nn.Conv2d(1, 2, 3), nn.Flatten()),
                          _img_x()),
}


@pytest.mark.parametrize("method,kw", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("base", list(LAYER_SUBCLASSES))
def test_layer_subclass_with_own_forward(base, method, kw):
    model, x = LAYER_SUBCLASSES[base]()
    if base.startswith("BatchNorm"):
        name = type(model[1]).__name__
        _assert_refused(model.eval(), x, [f"model[1] ({name})", "cannot be traced"], method, kw)
    else:
        _assert_sound(model.eval(), x, method, kw)


@pytest.mark.parametrize("method,kw", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("pre", [False, True], ids=["forward-hook", "forward-pre-hook"])
def test_global_module_hooks_refused(pre, method, kw):
    model, x = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval(), _mlp_x()
    if pre:
        handle = torch_module.register_module_forward_pre_hook(lambda mod, inp: None)
    else:
        handle = torch_module.register_module_forward_hook(lambda mod, inp, out: None)
    try:
        _assert_refused(model, x, ["global module forward" + (" pre-hook" if pre else " hook"),
                                   ], method, kw)
    finally:
        handle.remove()
    bounds(model, x, 0.05, method=method, **kw)  # removed: accepted again


def test_issue_example_is_sound():
    """The issue's example: one ReLU object used twice. Every sound method returned intervals
    that even m(x) escaped (before: ibp, crown-ibp, crown-forward and crown all did on this seed);
    traced, each ReLU call is its own node."""
    torch.manual_seed(0)
    relu = nn.ReLU()
    m = nn.Sequential(nn.Linear(16, 8), relu, nn.Linear(8, 8), relu, nn.Linear(8, 3)).eval()
    x = torch.rand(6, 16)
    for method in arguments.METHODS:
        if method != "etb":
            assert not _escapes(m, x, etbkernels.bounds(m, x, 0.05, method=method))
            _assert_sound(m, x, method, {})


def test_hook_added_after_a_first_call_is_refused():
    """Nothing about the model is cached between calls: a hook added later is seen, and once
    removed the model is accepted again."""
    model, x = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval(), _mlp_x()
    first = bounds(model, x, 0.05, method="ibp")
    handle = model[0].register_forward_hook(lambda mod, inp, out: out * 10)
    _assert_refused(model, x, ["model[0] (Linear)", "forward hook"], "ibp", {})  # a cached trace is no excuse
    handle.remove()
    again = bounds(model, x, 0.05, method="ibp")
    torch.testing.assert_close(again.lower, first.lower)


def test_parse_model_and_bounded_model_refuse_too():
    """The public parser and the BoundedModel wrapper go through the same checks."""
    model, x, says = forward_hook_on_layer()
    with pytest.raises(ValueError, match="forward hook"):
        parse_model(model, (16,), x)
    with pytest.raises(ValueError, match="forward hook"):
        BoundedModel(model, method="ibp", eps=0.05).bounds(x)


# ------------------------------------------------------------------------- still accepted
class PlainLinear(nn.Linear):
    """Keeps nn.Linear's forward: the parser's reading of it is exact."""


class PlainSequential(nn.Sequential):
    pass


def _plain_pair():
    """(plain model, the same weights in look-alike modules that keep the computation)."""
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
    alike = PlainSequential(PlainLinear(16, 8), nn.ReLU(), PlainSequential(nn.Linear(8, 8), nn.ReLU()),
                            PlainLinear(8, 3))
    alike.load_state_dict(plain.state_dict())
    return plain.eval(), alike.eval()


@pytest.mark.parametrize("method,kw", CONFIGS, ids=CONFIG_IDS)
def test_legitimate_models_still_work(method, kw):
    """Over-refusal guard: a plain nested Sequential, subclasses that keep the forward, a full
    backward hook and a backward pre-hook (they leave the forward's values alone), a removed
    forward hook, a tied weight, and a parametrized weight all give the plain model's bounds."""
    plain, alike = _plain_pair()
    x = _mlp_x()
    want = bounds(plain, x, 0.05, method=method, **kw)
    if method != "etb":
        assert not _escapes(plain, x, want)
    alike[0].register_full_backward_hook(lambda mod, gin, gout: None)
    alike[3].register_full_backward_pre_hook(lambda mod, gout: None)
    alike[2].register_forward_hook(lambda mod, inp, out: out * 5).remove()
    got = bounds(alike, x, 0.05, method=method, **kw)
    torch.testing.assert_close(got.lower, want.lower)
    torch.testing.assert_close(got.upper, want.upper)
    # two Linear modules sharing one weight: each is used once, the parser reads the shared tensor
    tied = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).eval()
    tied[2].weight = tied[0].weight
    bounds(tied, torch.rand(3, 8), 0.05, method=method, **kw)
    # a parametrization changes the class (ParametrizedLinear) but not its forward
    par = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    parametrize.register_parametrization(par[0], "weight", _Halve())
    b = bounds(par, x, 0.05, method=method, **kw)
    if method != "etb":
        assert not _escapes(par, x, b)
    with torch.no_grad():
        ref = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        ref[0].weight.copy_(par[0].weight)
        ref[0].bias.copy_(par[0].bias)
        ref[2].load_state_dict(par[2].state_dict())
    torch.testing.assert_close(b.lower, bounds(ref, x, 0.05, method=method, **kw).lower)


class _Halve(nn.Module):
    def forward(self, w):
        return w / 2


def test_bounded_model_refuses_a_hooked_or_overridden_wrapper():
    """bm(x) goes through the wrapper: a hook on it, or a subclass's own forward, changes bm(x) but not
    the bounds of bm.model, which would then not contain bm(x)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.rand(4, 6)
    bm = BoundedModel(model, method="ibp", eps=0.05)
    handle = bm.register_forward_hook(lambda mod, inp, out: out * 3 + 1)
    with pytest.raises(ValueError, match="forward hook is registered on the wrapper"):
        bm.bounds(x)
    handle.remove()
    b = bm.bounds(x)
    assert (b.lower <= bm(x)).all() and (bm(x) <= b.upper).all()

    class Shifted(BoundedModel):
        def forward(self, x, **kw):
            return super().forward(x, **kw) + 1

    with pytest.raises(ValueError, match="Shifted overrides forward"):
        Shifted(model, method="ibp", eps=0.05).bounds(x)
