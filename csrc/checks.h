// Host-side validation shared by every device's kernels: bad input must raise a Python
// exception that names the tensors and their shapes, never crash or compute garbage.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace etbk {

// Sizes of an Affine-ReLU-Affine block: N samples, n inputs, h hidden units, m outputs.
struct BlockDims {
  int64_t N, n, h, m;
};

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor, got layout ",
                   t.layout());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": all tensors must have the same dtype; center is ",
                   ref.scalar_type(), " but ", name, " is ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": all tensors must be on the same device; center is on ",
                    ref.device(), " but ", name, " is on ", t.device());
}

// Validates (center, radius, w1, b1, w2, b2) of a block op and returns its sizes.
inline BlockDims check_block_inputs(const char* op, const at::Tensor& center, const at::Tensor& radius,
                                    const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                    const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  TORCH_CHECK_TYPE(center.scalar_type() == at::kFloat || center.scalar_type() == at::kDouble, op,
                   ": expected float32 or float64 tensors, got center of dtype ", center.scalar_type(),
                   " (the Python wrappers etbkernels.etb_block / ibp_block accept float16 and bfloat16)");
  check_float_tensor(op, "radius", radius, center);
  check_float_tensor(op, "w1", w1, center);
  check_float_tensor(op, "w2", w2, center);
  if (b1) check_float_tensor(op, "b1", *b1, center);
  if (b2) check_float_tensor(op, "b2", *b2, center);

  TORCH_CHECK_VALUE(center.dim() == 2, op, ": center must be 2-D (N, n), got shape ", center.sizes());
  TORCH_CHECK_VALUE(radius.sizes() == center.sizes(), op, ": radius must have the shape of center ", center.sizes(),
                    ", got ", radius.sizes());
  const int64_t N = center.size(0), n = center.size(1);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == n, op, ": w1 must be (h, n) with n = center.size(1) = ", n,
                    " (nn.Linear layout: out x in), got w1 of shape ", w1.sizes());
  const int64_t h = w1.size(0);
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(1) == h, op, ": w2 must be (m, h) with h = w1.size(0) = ", h,
                    " (nn.Linear layout: out x in), got w2 of shape ", w2.sizes());
  const int64_t m = w2.size(0);
  if (b1) {
    TORCH_CHECK_VALUE(b1->dim() == 1 && b1->size(0) == h, op, ": b1 must have shape (", h, ",) to match w1 ",
                      w1.sizes(), ", got ", b1->sizes());
  }
  if (b2) {
    TORCH_CHECK_VALUE(b2->dim() == 1 && b2->size(0) == m, op, ": b2 must have shape (", m, ",) to match w2 ",
                      w2.sizes(), ", got ", b2->sizes());
  }
  return {N, n, h, m};
}

// Checks of input *values*, deferred: each adds a 0-dim bool "bad" flag computed where the data is,
// and verify() reads all flags with one device-to-host copy once the op's work is queued. On a GPU,
// reading each flag where it is computed (.item()) would make the host wait for the device there and
// leave the GPU idle while the rest of the op is launched. The kernels never index by these values,
// so computing with bad values first is safe; their outputs are dropped when verify() throws.
class DeferredChecks {
 public:
  // `message` runs only when the check fails (it may read the data, e.g. a minimum).
  void add(at::Tensor bad, std::function<std::string()> message) {
    flags_.push_back(bad.reshape({1}));
    messages_.push_back(std::move(message));
  }
  void verify() const {
    if (flags_.empty()) return;
    const at::Tensor host = at::cat(flags_).to(at::kCPU);
    const bool* bad = host.const_data_ptr<bool>();
    for (size_t i = 0; i < messages_.size(); ++i) TORCH_CHECK_VALUE(!bad[i], messages_[i]());
  }

 private:
  std::vector<at::Tensor> flags_;
  std::vector<std::function<std::string()>> messages_;
};

// A negative radius is not a box. NaN passes (it propagates to the output as NaN).
inline void check_radius_nonnegative(const char* op, const at::Tensor& radius, DeferredChecks& checks) {
  if (radius.numel() == 0) return;
  checks.add(radius.lt(0).any(), [op, radius] {
    return c10::str(op, ": radius must be >= 0 everywhere (it is the half-width of the input box); min radius = ",
                    radius.min().item<double>());
  });
}

// A caller-given ReLU mask: (N, h), bool or a real dtype holding only 0 and 1. Returns it in `dtype`.
inline at::Tensor prepare_mask(const char* op, const at::Tensor& mask, const BlockDims& d, const at::Tensor& ref,
                               DeferredChecks& checks) {
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == d.N && mask.size(1) == d.h, op, ": mask must be (N, h) = (",
                    d.N, ", ", d.h, "), got shape ", mask.sizes());
  TORCH_CHECK_VALUE(mask.device() == ref.device(), op, ": mask must be on ", ref.device(), " like center, got ",
                    mask.device());
  TORCH_CHECK_TYPE(!at::isComplexType(mask.scalar_type()), op, ": mask must be bool or real, got ",
                   mask.scalar_type());
  if (mask.scalar_type() != at::kBool && mask.numel() > 0) {
    checks.add(at::logical_or(mask.eq(0), mask.eq(1)).all().logical_not(), [op] {
      return c10::str(op, ": mask must hold only 0 and 1 (or be bool); it has other values (or NaN)");
    });
  }
  at::Tensor s = mask.to(ref.scalar_type()).contiguous();
  // the op returns s: a fresh tensor, never the caller's own mask (the schema promises no alias)
  return s.is_alias_of(mask) ? s.clone() : s;
}

}  // namespace etbk
