// Device-generic parts of the block ops, written with ATen calls (which run on any device):
// input checks, the cheap affine pieces (c1, r1, the mask, the center) and the IBP block.
// Each device supplies only the fused ETB radius kernels.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace etbk {

// radius[n, j] = sum_k |sum_i w2[j, i] s[n, i] w1[i, k]| r[n, k], written into `out` (N, m).
// All inputs contiguous: w1 (h, n), w2 (m, h), s (N, h) of 0/1, r (N, n).
using RadiusFwdFn = void (*)(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                             at::Tensor& out);
// Gradients of that radius for an upstream gradient `grad` (N, m): writes dr (N, n), dw1 (h, n), dw2 (m, h).
using RadiusBwdFn = void (*)(const at::Tensor& grad, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
                             const at::Tensor& r, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2);

using Grads6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> etb_block_impl(const at::Tensor& center, const at::Tensor& radius,
                                                              const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                              const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                                              const std::optional<at::Tensor>& mask, bool output_center,
                                                              RadiusFwdFn radius_fwd);

Grads6 etb_block_backward_impl(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                               const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                               const at::Tensor& w2, const at::Tensor& s, bool output_center, RadiusBwdFn radius_bwd);

std::tuple<at::Tensor, at::Tensor> ibp_block_impl(const at::Tensor& center, const at::Tensor& radius,
                                                  const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                  const at::Tensor& w2, const std::optional<at::Tensor>& b2);

Grads6 ibp_block_backward_impl(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                               const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                               const at::Tensor& w2);

}  // namespace etbk
