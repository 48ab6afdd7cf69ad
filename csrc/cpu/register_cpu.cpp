// CPU kernels of the etbkernels ops: the device-generic block code with the CPU radius kernels.
#include <torch/library.h>

#include "block_common.h"
#include "cpu/etb_radius_cpu.h"

namespace etbk::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> etb_block_cpu(const at::Tensor& center, const at::Tensor& radius,
                                                             const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                             const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                                             const std::optional<at::Tensor>& mask,
                                                             bool output_center) {
  return etb_block_impl(center, radius, w1, b1, w2, b2, mask, output_center, etb_radius_fwd_cpu);
}

Grads6 etb_block_backward_cpu(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                              const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                              const at::Tensor& w2, const at::Tensor& s, bool output_center) {
  return etb_block_backward_impl(grad_center, grad_radius, center, radius, w1, b1, w2, s, output_center,
                                 etb_radius_bwd_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(etbkernels, CPU, m) {
  m.impl("etb_block", &etb_block_cpu);
  m.impl("etb_block_backward", &etb_block_backward_cpu);
  m.impl("ibp_block", &ibp_block_impl);
  m.impl("ibp_block_backward", &ibp_block_backward_impl);
}

}  // namespace etbk::cpu
