#include "block_common.h"

#include <ATen/core/LegacyTypeDispatch.h>

#include "checks.h"
#include "poison.h"

namespace etbk {
namespace {

// x @ w^T (+ b): the affine map of nn.Linear.
at::Tensor affine(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  return b ? at::addmm(*b, x, w.t()) : at::mm(x, w.t());
}

void check_grad(const char* op, const char* name, const at::Tensor& g, const at::Tensor& center, int64_t m) {
  TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == center.size(0) && g.size(1) == m, op, ": ", name, " must be (",
                    center.size(0), ", ", m, "), got ", g.sizes());
  TORCH_CHECK_TYPE(g.scalar_type() == center.scalar_type(), op, ": ", name, " must have dtype ",
                   center.scalar_type(), ", got ", g.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> etb_block_impl(const at::Tensor& center, const at::Tensor& radius,
                                                              const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                              const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                                              const std::optional<at::Tensor>& mask, bool output_center,
                                                              RadiusFwdFn radius_fwd) {
  // Kernels call ATen ops on tensors that may require grad: autograd is handled outside.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const BlockDims d = check_block_inputs("etb_block", center, radius, w1, b1, w2, b2);
  DeferredChecks checks;
  check_radius_nonnegative("etb_block", radius, checks);
  const at::Tensor r = radius.contiguous();
  const at::Tensor W1 = w1.contiguous();
  const at::Tensor W2 = w2.contiguous();

  const at::Tensor c1 = affine(center, W1, b1);
  at::Tensor s;
  if (mask) {
    s = prepare_mask("etb_block", *mask, d, center, checks);
  } else {
    // A ReLU can be active somewhere in the box iff its IBP upper bound c1 + |W1| r is > 0.
    // Written as !(upper <= 0) so a NaN upper bound keeps the unit and its NaN reaches the output.
    s = at::add(c1, at::mm(r, W1.abs().t())).le(0).logical_not().to(center.scalar_type());
  }
  // s * c1 (not a masked select) so a NaN in c1 still reaches the output.
  const at::Tensor act = output_center ? at::relu(c1) : at::mul(s, c1);
  at::Tensor out_center = affine(act, W2, b2);
  at::Tensor out_radius = empty_poisoned({d.N, d.m}, center.options());
  if (out_radius.numel() > 0) radius_fwd(W1, W2, s, r, out_radius);
  checks.verify();  // after all the work is queued: one wait for the device, at the end
  return {out_center, out_radius, s};
}

Grads6 etb_block_backward_impl(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                               const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                               const at::Tensor& w2, const at::Tensor& s, bool output_center, RadiusBwdFn radius_bwd) {
  // Kernels call ATen ops on tensors that may require grad: autograd is handled outside.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "etb_block_backward";
  const BlockDims d = check_block_inputs(op, center, radius, w1, b1, w2, std::nullopt);
  check_grad(op, "grad_center", grad_center, center, d.m);
  check_grad(op, "grad_radius", grad_radius, center, d.m);
  TORCH_CHECK_VALUE(s.sizes() == at::IntArrayRef({d.N, d.h}), op, ": s must be (N, h), got ", s.sizes());
  const at::Tensor W1 = w1.contiguous();
  const at::Tensor W2 = w2.contiguous();
  const at::Tensor S = s.to(center.scalar_type()).contiguous();

  // Center path: center' = W2 (gate * c1) + b2, gate = s (linear) or 1[c1 > 0] (output).
  const at::Tensor c1 = affine(center, W1, b1);
  const at::Tensor gate = output_center ? c1.gt(0).to(c1.scalar_type()) : S;
  const at::Tensor act = at::mul(gate, c1);
  at::Tensor dw2 = at::mm(grad_center.t(), act);
  at::Tensor db2 = grad_center.sum(0);
  const at::Tensor dc1 = at::mul(at::mm(grad_center, W2), gate);
  at::Tensor dw1 = at::mm(dc1.t(), center);
  at::Tensor db1 = dc1.sum(0);
  at::Tensor dcenter = at::mm(dc1, W1);

  // Radius path (the mask carries no gradient): fused kernel, P tiles recomputed.
  at::Tensor dradius = at::zeros({d.N, d.n}, center.options());
  if (d.N > 0 && d.n > 0 && d.h > 0 && d.m > 0) {
    at::Tensor dw1_r = empty_poisoned({d.h, d.n}, center.options());
    at::Tensor dw2_r = empty_poisoned({d.m, d.h}, center.options());
    // A sample with no active unit has P = 0 and no radius gradient; its radius goes in as 0, since
    // T = G r sign(0) is NaN for an infinite or NaN r and would reach every weight (0 * NaN) on
    // kernels that multiply it by the masked weights (all but the CPU's gathered strategy).
    const at::Tensor live = S.ne(0).any(1, /*keepdim=*/true);
    const at::Tensor R = at::where(live, radius, at::zeros({}, radius.options())).contiguous();
    radius_bwd(grad_radius.contiguous(), W1, W2, S, R, dradius, dw1_r, dw2_r);
    dw1.add_(dw1_r);
    dw2.add_(dw2_r);
  }
  return {dcenter, dradius, dw1, db1, dw2, db2};
}

std::tuple<at::Tensor, at::Tensor> ibp_block_impl(const at::Tensor& center, const at::Tensor& radius,
                                                  const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                  const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  // Kernels call ATen ops on tensors that may require grad: autograd is handled outside.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_block_inputs("ibp_block", center, radius, w1, b1, w2, b2);
  DeferredChecks checks;
  check_radius_nonnegative("ibp_block", radius, checks);
  const at::Tensor c1 = affine(center, w1, b1);
  const at::Tensor r1 = at::mm(radius, w1.abs().t());
  const at::Tensor up = at::relu(c1 + r1);
  const at::Tensor lo = at::relu(c1 - r1);
  auto out = std::make_tuple(affine((up + lo).mul_(0.5), w2, b2), at::mm((up - lo).mul_(0.5), w2.abs().t()));
  checks.verify();
  return out;
}

Grads6 ibp_block_backward_impl(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                               const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                               const at::Tensor& w2) {
  // Kernels call ATen ops on tensors that may require grad: autograd is handled outside.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "ibp_block_backward";
  const BlockDims d = check_block_inputs(op, center, radius, w1, b1, w2, std::nullopt);
  check_grad(op, "grad_center", grad_center, center, d.m);
  check_grad(op, "grad_radius", grad_radius, center, d.m);
  const at::Tensor c1 = affine(center, w1, b1);
  const at::Tensor r1 = at::mm(radius, w1.abs().t());
  const at::Tensor pre_up = c1 + r1, pre_lo = c1 - r1;
  const at::Tensor up = at::relu(pre_up), lo = at::relu(pre_lo);
  const at::Tensor c2 = (up + lo).mul_(0.5), r2 = (up - lo).mul_(0.5);

  // Layer 2: center' = W2 c2 + b2, radius' = |W2| r2.
  at::Tensor dw2 = at::mm(grad_center.t(), c2).add_(at::mm(grad_radius.t(), r2).mul_(w2.sgn()));
  at::Tensor db2 = grad_center.sum(0);
  const at::Tensor dc2 = at::mm(grad_center, w2), dr2 = at::mm(grad_radius, w2.abs());
  // ReLU on both ends (derivative 0 at the kink, as torch.relu).
  const at::Tensor dup = (dc2 + dr2).mul_(0.5).mul_(pre_up.gt(0));
  const at::Tensor dlo = (dc2 - dr2).mul_(0.5).mul_(pre_lo.gt(0));
  const at::Tensor dc1 = dup + dlo, dr1 = dup - dlo;
  // Layer 1: c1 = W1 mu + b1, r1 = |W1| r.
  at::Tensor dw1 = at::mm(dc1.t(), center).add_(at::mm(dr1.t(), radius).mul_(w1.sgn()));
  at::Tensor db1 = dc1.sum(0);
  return {at::mm(dc1, w1), at::mm(dr1, w1.abs()), dw1, db1, dw2, db2};
}

}  // namespace etbk
