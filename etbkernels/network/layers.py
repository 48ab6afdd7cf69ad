"""Affine maps a network is made of, each with the four actions bound propagation needs.

Every op acts on a batch whose first dimension is free (samples, or directions of a
linear map) and whose other dimensions are the op's per-sample ``in_shape``:

- ``forward(x)``: the affine map itself (with bias), e.g. a centre;
- ``linear(x)``: its linear part (no bias), applied to directions (columns of a Jacobian);
- ``abs_linear(r)``: ``|W| r``, the radius step of IBP;
- ``transpose(y)``: ``W^T y``, applied to rows of a Jacobian when it is formed backward.

Weights are read from the modules at parse time without detaching, so every action is
differentiable in the model's parameters.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

Shape = Tuple[int, ...]


def numel(shape: Shape) -> int:
    """Elements per sample of a per-sample shape."""
    n = 1
    for s in shape:
        n *= s
    return n


class AffineOp:
    """Base class: an affine map from per-sample ``in_shape`` to ``out_shape``.

    In a traced graph (:mod:`.graph`) every op also answers ``in_shapes`` (one per input; several
    for :class:`~.graph_ops.AddOp` and :class:`~.graph_ops.CatOp`) and ``transpose_inputs``; the
    graph walkers call only these methods, never an op's type.
    """

    in_shape: Shape
    out_shape: Shape
    affine = True
    #: the op only moves numbers around (a reshape): rows through it stay views, IBP through it is exact
    is_reshape = False
    #: a reshape to one dimension: the forward paths take Flatten + Linear as one step
    is_flatten = False
    #: convolutions run faster on channels-last images (oneDNN): directions and rows are kept so
    channels_last = False

    def window_conv(self) -> Optional["ConvOp"]:
        """This op as a convolution (Conv2d, AvgPool2d), or None: the conv-path hooks (patches,
        full CROWN's windows) need its kernel, stride, padding and dilation."""
        return None

    def channel_scale(self) -> Optional[Tensor]:
        """Its per-channel scale (C,) if it only scales (and shifts) each channel, else None: such an
        op keeps patches and windows as they are."""
        return None

    def dense_weight(self) -> Optional[Tensor]:
        """Its weight matrix (out, in) if it is a Linear layer, else None: specs fold into it and rows
        pull back through it with one matmul."""
        return None

    def keeps_windows(self) -> bool:
        """Whether it maps receptive windows to windows (a convolution, or a per-channel scale)."""
        return self.window_conv() is not None or self.channel_scale() is not None

    @property
    def in_shapes(self):
        """Per-sample shape of each input."""
        return [self.in_shape]

    def transpose_inputs(self, y: Tensor):
        """``W_i^T y`` for each input i (one here)."""
        return [self.transpose(y)]

    def abs_op(self) -> "AffineOp":
        """The op with ``|W|`` as its linear part and no bias (maps whose weights are >= 0 return themselves)."""
        return self

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        """The affine map with its bias, on (B, *in_shape): e.g. a centre."""
        raise NotImplementedError

    def linear(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        """The linear part alone (no bias), on (B, *in_shape): directions of a Jacobian."""
        raise NotImplementedError

    def abs_linear(self, r: Tensor) -> Tensor:  # pragma: no cover - interface
        """``|W| r`` on (B, *in_shape): IBP's radius step."""
        raise NotImplementedError

    def transpose(self, y: Tensor) -> Tensor:  # pragma: no cover - interface
        """``W^T y`` on (B, *out_shape): rows of a Jacobian formed backward."""
        raise NotImplementedError


class LinearOp(AffineOp):
    """``x @ W^T + b`` on (B, n) input (nn.Linear layout)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], in_shape: Shape):
        self.weight, self.bias = weight, bias
        self.in_shape, self.out_shape = in_shape, (weight.shape[0],)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def linear(self, x):
        return F.linear(x, self.weight)

    def abs_linear(self, r):
        return F.linear(r, self.weight.abs())

    def transpose(self, y):
        return y @ self.weight

    def abs_op(self):
        return LinearOp(self.weight.abs(), None, self.in_shape)

    def dense_weight(self):
        return self.weight


class ConvOp(AffineOp):
    """``conv2d(x, W, b)`` with stride, padding, dilation and groups (zero padding only)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int,
                 in_shape: Shape):
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.in_shape = in_shape
        size = [(in_shape[1 + d] + 2 * padding[d] - dilation[d] * (weight.shape[2 + d] - 1) - 1) // stride[d] + 1
                for d in range(2)]
        if min(size) < 1:
            raise ValueError(f"Conv2d: input of per-sample shape {tuple(in_shape)} is smaller than the kernel "
                             f"{tuple(weight.shape[2:])} (padding {padding}, dilation {dilation})")
        self.out_shape = (weight.shape[0], size[0], size[1])
        # conv_transpose2d needs output_padding to reproduce the input size exactly
        self.output_padding = tuple(
            in_shape[1 + d] - ((self.out_shape[1 + d] - 1) * stride[d] - 2 * padding[d]
                               + dilation[d] * (weight.shape[2 + d] - 1) + 1)
            for d in range(2))
        # On CPU, a strided conv of a single-channel input (a grey-scale image's first layer)
        # transposes faster as one matmul and a col2im (F.fold): 1.07-2.95x oneDNN's conv_transpose2d
        # on the six such shapes of bench/micro_network_ops.py (512 images, 2 cores); on 3-channel
        # inputs fold was 0.73-1.13x, on stride 1 0.12-0.77x, so those keep conv_transpose2d. Not
        # measured against cuDNN, so CUDA tensors keep conv_transpose2d too.
        self.transpose_by_fold = groups == 1 and weight.shape[1] == 1 and min(stride) >= 2

    def _conv(self, x, w, b=None):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    channels_last = True

    def abs_op(self):
        return ConvOp(self.weight.abs(), None, self.stride, self.padding, self.dilation, self.groups, self.in_shape)

    def window_conv(self):
        return self

    def forward(self, x):
        return self._conv(x, self.weight, self.bias)

    def linear(self, x):
        return self._conv(x, self.weight)

    def abs_linear(self, r):
        return self._conv(r, self.weight.abs())

    def transpose(self, y):
        if self.transpose_by_fold and y.device.type == "cpu":
            B, C, Ho, Wo = y.shape  # channels-last y makes the permute below a view
            cols = torch.matmul(y.permute(0, 2, 3, 1).reshape(B, Ho * Wo, C), self.weight.reshape(C, -1))
            return F.fold(cols.transpose(1, 2), tuple(self.in_shape[1:]), tuple(self.weight.shape[2:]),
                          dilation=self.dilation, padding=self.padding, stride=self.stride)
        return F.conv_transpose2d(y, self.weight, None, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class ElementAffineOp(AffineOp):
    """``x * scale + shift`` with constant tensors that broadcast to the per-sample shape (e.g. a
    learned per-position offset, ``x - self.mean`` with a mean per pixel)."""

    def __init__(self, scale: Tensor, shift: Optional[Tensor], in_shape: Shape):
        self.in_shape = self.out_shape = tuple(in_shape)
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return x * self.scale if self.shift is None else x * self.scale + self.shift

    def linear(self, x):
        return x * self.scale

    def abs_linear(self, r):
        return r * self.scale.abs()

    def transpose(self, y):
        return y * self.scale

    def abs_op(self):
        return ElementAffineOp(self.scale.abs(), None, self.in_shape)


class ChannelAffineOp(ElementAffineOp):
    """``x * scale + shift`` per channel (dimension 1): eval BatchNorm, input normalization, scalars;
    folded into a neighbouring Linear/Conv2d in a chain, and kept by patches and windows."""

    def __init__(self, scale: Tensor, shift: Optional[Tensor], in_shape: Shape):
        view = (-1,) + (1,) * (len(in_shape) - 1)
        super().__init__(scale.reshape(view), None if shift is None else shift.reshape(view), in_shape)

    def abs_op(self):
        return ChannelAffineOp(self.scale.abs(), None, self.in_shape)

    def channel_scale(self):
        return self.scale.flatten()


class AvgPoolOp(AffineOp):
    """``avg_pool2d`` (count_include_pad=True, floor mode): a linear map with weights >= 0."""

    def __init__(self, kernel, stride, padding, in_shape: Shape, dtype, device):
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.in_shape = in_shape
        C = in_shape[0]
        # the same map as a depthwise convolution, for the transpose
        self.weight = torch.full((C, 1) + tuple(kernel), 1.0 / (kernel[0] * kernel[1]), dtype=dtype, device=device)
        self._conv = ConvOp(self.weight, None, stride, padding, (1, 1), C, in_shape)
        self.out_shape = self._conv.out_shape

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding)

    linear = forward
    abs_linear = forward

    def transpose(self, y):
        return self._conv.transpose(y)

    def window_conv(self):
        return self._conv


class ReshapeOp(AffineOp):
    """A per-sample reshape (``x.view(N, ...)``, ``x.reshape``): a permutation-free linear map."""

    is_reshape = True

    def __init__(self, in_shape: Shape, out_shape: Shape):
        if numel(in_shape) != numel(out_shape):
            raise ValueError(f"reshape of per-sample shape {tuple(in_shape)} to {tuple(out_shape)}: sizes differ")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.out_shape)  # not -1: that fails for an empty batch

    linear = forward
    abs_linear = forward

    def transpose(self, y):
        return y.reshape((y.shape[0],) + tuple(self.in_shape))


class FlattenOp(ReshapeOp):
    """``x.flatten(1)``: the reshape to one dimension (the forward paths treat Flatten + Linear as one step)."""

    is_flatten = True

    def __init__(self, in_shape: Shape):
        super().__init__(in_shape, (numel(in_shape),))
