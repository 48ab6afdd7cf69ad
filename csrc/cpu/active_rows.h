// Per-sample gather of the ReLUs a sample's mask keeps. ETB's product W2 S_n W1 only involves
// the active hidden units, so each sample multiplies W2[:, active] by W1[active, :]: fewer
// flops than the dense product (by the active fraction) and plain BLAS calls on the result.
#pragma once

#include <ATen/ATen.h>

#include "poison.h"

#include <cstring>
#include <vector>

namespace etbk::cpu {

template <typename scalar_t>
struct ActiveRows {
  at::Tensor w1a;             // (h, n): rows 0..count-1 hold W1[active, :]
  at::Tensor w2ta;            // (h, m): rows 0..count-1 hold W2^T[active, :]
  std::vector<int64_t> index; // the active hidden units, ascending
  int64_t count = 0;

  ActiveRows(int64_t h, int64_t n, int64_t m, const at::TensorOptions& opts)
      : w1a(empty_poisoned({h, n}, opts)), w2ta(empty_poisoned({h, m}, opts)), index(h) {}

  // Gathers the rows of w1 (h, n) and w2t (h, m) where mask (h values, 0/1) is nonzero.
  void gather(const scalar_t* mask, const at::Tensor& w1, const at::Tensor& w2t) {
    const int64_t h = w1.size(0), n = w1.size(1), m = w2t.size(1);
    const scalar_t* src1 = w1.const_data_ptr<scalar_t>();
    const scalar_t* src2 = w2t.const_data_ptr<scalar_t>();
    scalar_t* dst1 = w1a.data_ptr<scalar_t>();
    scalar_t* dst2 = w2ta.data_ptr<scalar_t>();
    count = 0;
    for (int64_t i = 0; i < h; ++i) {
      if (mask[i] == scalar_t(0)) continue;
      std::memcpy(dst1 + count * n, src1 + i * n, sizeof(scalar_t) * n);
      std::memcpy(dst2 + count * m, src2 + i * m, sizeof(scalar_t) * m);
      index[count++] = i;
    }
  }

  at::Tensor w1_active() const { return w1a.narrow(0, 0, count); }   // (count, n)
  at::Tensor w2t_active() const { return w2ta.narrow(0, 0, count); } // (count, m)
};

}  // namespace etbk::cpu
