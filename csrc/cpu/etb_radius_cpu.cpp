// Fused CPU kernels for the ETB radius |W2 S_n W1| r_n (forward) and its gradients (backward).
// Neither materializes P_n = W2 S_n W1 for all samples: each task computes P one tile of
// output rows at a time into a thread-local buffer (BLAS), reduces it while it is in cache,
// and moves on. Memory beyond inputs/outputs: O(threads * (h * (n + m) + tile)).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "block_common.h"
#include "cpu/active_rows.h"
#include "poison.h"

namespace etbk::cpu {
namespace {

// out[j] = sum_k |tile[j, k]| * r[k] for each row j of a (rows x n) tile.
template <typename scalar_t>
void abs_dot_rows(const scalar_t* tile, int64_t rows, int64_t n, const scalar_t* r, scalar_t* out) {
  for (int64_t j = 0; j < rows; ++j) {
    const scalar_t* p = tile + j * n;
    scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; ++k) acc += std::abs(p[k]) * r[k];
    out[j] = acc;
  }
}

// Backward epilogue of one tile, in place: dr[k] += sum_j g[j] |P[j,k]|, then P -> T with
// T[j,k] = g[j] r[k] sign(P[j,k]) (sign(0) = 0).
template <typename scalar_t>
void tile_backward_epilogue(scalar_t* tile, int64_t rows, int64_t n, const scalar_t* g, const scalar_t* r,
                            scalar_t* dr) {
  for (int64_t j = 0; j < rows; ++j) {
    scalar_t* p = tile + j * n;
    const scalar_t gj = g[j];
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const scalar_t v = p[k];
      dr[k] += gj * std::abs(v);
      const scalar_t sgn = scalar_t(v > 0) - scalar_t(v < 0);
      p[k] = gj * r[k] * sgn;
    }
  }
}

template <typename scalar_t>
void radius_fwd(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                at::Tensor& out) {
  const int64_t N = r.size(0), n = w1.size(1), h = w1.size(0), m = w2.size(0);
  if (n == 0 || h == 0) {
    out.zero_();
    return;
  }
  const at::Tensor w2t = w2.t().contiguous();  // (h, m): active rows of W2^T are contiguous
  const int64_t bm = tile_rows(m, n, sizeof(scalar_t));
  const auto opts = w1.options();
  const scalar_t* s_ptr = s.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();

  // One task per sample range; with fewer samples than threads this runs inline and the
  // BLAS calls use the threads instead.
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    ActiveRows<scalar_t> act(h, n, m, opts);
    at::Tensor tile_buf = empty_poisoned({bm, n}, opts);
    for (int64_t b = begin; b < end; ++b) {
      act.gather(s_ptr + b * h, w1, w2t);
      scalar_t* out_row = out_ptr + b * m;
      if (act.count == 0) {
        std::fill(out_row, out_row + m, scalar_t(0));
        continue;
      }
      const at::Tensor a = act.w1_active(), bt = act.w2t_active();
      for (int64_t j0 = 0; j0 < m; j0 += bm) {
        const int64_t rows = std::min(bm, m - j0);
        at::Tensor tile = tile_buf.narrow(0, 0, rows);
        at::mm_out(tile, bt.narrow(1, j0, rows).t(), a);  // P[j0:j0+rows, :]
        abs_dot_rows(tile.const_data_ptr<scalar_t>(), rows, n, r_ptr + b * n, out_row + j0);
      }
    }
  });
}

template <typename scalar_t>
void radius_bwd(const at::Tensor& grad, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
                const at::Tensor& r, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2) {
  const int64_t N = r.size(0), n = w1.size(1), h = w1.size(0), m = w2.size(0);
  const at::Tensor w2t = w2.t().contiguous();
  const int64_t bm = tile_rows(m, n, sizeof(scalar_t));
  const auto opts = w1.options();
  const scalar_t* s_ptr = s.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
  const scalar_t* g_ptr = grad.const_data_ptr<scalar_t>();
  scalar_t* dr_ptr = dr.data_ptr<scalar_t>();

  // Weight gradients are summed over samples: each chunk of samples accumulates its own
  // partial sums, added in chunk order at the end, so the result does not depend on timing.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(N, at::get_num_threads()));
  std::vector<at::Tensor> dw1_part(chunks), dw2_part(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
    ActiveRows<scalar_t> act(h, n, m, opts);
    at::Tensor tile_buf = empty_poisoned({bm, n}, opts);
    at::Tensor dw2_tile_buf = empty_poisoned({bm, h}, opts);
    at::Tensor dw1a_buf = empty_poisoned({h, n}, opts);
    for (int64_t c = cbegin; c < cend; ++c) {
      at::Tensor dw1_acc = at::zeros({h, n}, opts);
      at::Tensor dw2_acc = at::zeros({m, h}, opts);
      scalar_t* dw1_acc_ptr = dw1_acc.data_ptr<scalar_t>();
      scalar_t* dw2_acc_ptr = dw2_acc.data_ptr<scalar_t>();
      for (int64_t b = c * N / chunks; b < (c + 1) * N / chunks; ++b) {
        act.gather(s_ptr + b * h, w1, w2t);
        const int64_t ha = act.count;
        if (ha == 0) continue;  // P = 0: no gradient, dr row stays 0
        const at::Tensor a = act.w1_active(), bt = act.w2t_active();
        at::Tensor dw1a = dw1a_buf.narrow(0, 0, ha);
        for (int64_t j0 = 0; j0 < m; j0 += bm) {
          const int64_t rows = std::min(bm, m - j0);
          at::Tensor tile = tile_buf.narrow(0, 0, rows);
          const at::Tensor bt_tile = bt.narrow(1, j0, rows);  // (ha, rows) = W2[j0:, active]^T
          at::mm_out(tile, bt_tile.t(), a);
          tile_backward_epilogue(tile.data_ptr<scalar_t>(), rows, n, g_ptr + b * m + j0, r_ptr + b * n,
                                 dr_ptr + b * n);
          // dW2[j, active] += (T W1a^T)[j, :]; dW1[active, :] += (W2[:, active]^T T)
          at::Tensor dw2_tile = dw2_tile_buf.narrow(0, 0, rows).narrow(1, 0, ha);
          at::mm_out(dw2_tile, tile, a.t());
          const scalar_t* t2 = dw2_tile.const_data_ptr<scalar_t>();
          for (int64_t j = 0; j < rows; ++j) {  // dw2_tile rows are strided by h
            scalar_t* dst = dw2_acc_ptr + (j0 + j) * h;
            for (int64_t i = 0; i < ha; ++i) dst[act.index[i]] += t2[j * h + i];
          }
          if (j0 == 0) {
            at::mm_out(dw1a, bt_tile, tile);
          } else {
            dw1a.addmm_(bt_tile, tile);
          }
        }
        const scalar_t* src = dw1a.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < ha; ++i) {
          scalar_t* dst = dw1_acc_ptr + act.index[i] * n;
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) dst[k] += src[i * n + k];
        }
      }
      dw1_part[c] = dw1_acc;
      dw2_part[c] = dw2_acc;
    }
  });
  dw1.copy_(dw1_part[0]);
  dw2.copy_(dw2_part[0]);
  for (int64_t c = 1; c < chunks; ++c) {
    dw1.add_(dw1_part[c]);
    dw2.add_(dw2_part[c]);
  }
}

void radius_fwd_cpu(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                    at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_radius_fwd_cpu",
                             [&] { radius_fwd<scalar_t>(w1, w2, s, r, out); });
}

void radius_bwd_cpu(const at::Tensor& grad, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
                    const at::Tensor& r, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2) {
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_radius_bwd_cpu",
                             [&] { radius_bwd<scalar_t>(grad, w1, w2, s, r, dr, dw1, dw2); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> etb_block_cpu(const at::Tensor& center, const at::Tensor& radius,
                                                             const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                             const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                                             const std::optional<at::Tensor>& mask,
                                                             bool output_center) {
  return etb_block_impl(center, radius, w1, b1, w2, b2, mask, output_center, radius_fwd_cpu);
}

Grads6 etb_block_backward_cpu(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                              const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                              const at::Tensor& w2, const at::Tensor& s, bool output_center) {
  return etb_block_backward_impl(grad_center, grad_radius, center, radius, w1, b1, w2, s, output_center,
                                 radius_bwd_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(etbkernels, CPU, m) {
  m.impl("etb_block", &etb_block_cpu);
  m.impl("etb_block_backward", &etb_block_backward_cpu);
  m.impl("ibp_block", &ibp_block_impl);
  m.impl("ibp_block_backward", &ibp_block_backward_impl);
}

}  // namespace etbk::cpu
