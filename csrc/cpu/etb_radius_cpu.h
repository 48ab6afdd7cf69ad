// CPU kernels for the ETB radius |W2 S_n W1| r_n and its gradients (see block_common.h for the
// contract). Neither materializes P_n = W2 S_n W1 for all samples: each task computes P one
// tile at a time into a thread-local buffer (BLAS), applies the epilogue while the tile is in
// cache, and moves on. Extra memory: O(threads * (h * (n + m) + tile)), independent of N.
#pragma once

#include <ATen/ATen.h>

namespace etbk::cpu {

void etb_radius_fwd_cpu(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                        at::Tensor& out);

void etb_radius_bwd_cpu(const at::Tensor& grad, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
                        const at::Tensor& r, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2);

// Fills rows [0, count * m) of `a` (>= count*m x h, contiguous) with W2[j, :] * s[b0 + b, :]:
// the masked second layer of samples b0 .. b0+count-1, stacked (the "stacked" strategy).
template <typename scalar_t>
void stack_masked_w2(const scalar_t* w2, const scalar_t* s, int64_t b0, int64_t count, int64_t m, int64_t h,
                     scalar_t* a) {
  for (int64_t b = 0; b < count; ++b) {
    const scalar_t* srow = s + (b0 + b) * h;
    for (int64_t j = 0; j < m; ++j) {
      const scalar_t* wrow = w2 + j * h;
      scalar_t* dst = a + (b * m + j) * h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) dst[i] = wrow[i] * srow[i];
    }
  }
}

}  // namespace etbk::cpu
