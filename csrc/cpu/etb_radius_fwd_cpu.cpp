// Forward: radius[n, j] = sum_k |P_n[j, k]| r[n, k], P_n = W2 S_n W1, tile by tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/active_rows.h"
#include "cpu/etb_radius_cpu.h"
#include "cpu/strategy.h"
#include "cpu/tile_epilogue.h"
#include "poison.h"

namespace etbk::cpu {
namespace {

template <typename scalar_t>
void fwd_gathered(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                  at::Tensor& out) {
  const int64_t N = r.size(0), n = w1.size(1), h = w1.size(0), m = w2.size(0);
  const at::Tensor w2t = w2.t().contiguous();  // (h, m): the active rows of W2^T are contiguous
  const int64_t bm = tile_rows(m, n, sizeof(scalar_t));
  const auto opts = w1.options();
  const scalar_t* s_ptr = s.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();

  // One task per sample range; with a single sample this runs inline and BLAS uses the threads.
  parallel_tasks(0, N, [&](int64_t begin, int64_t end) {
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
        const scalar_t* p = tile.const_data_ptr<scalar_t>();
        for (int64_t j = 0; j < rows; ++j) out_row[j0 + j] = abs_dot(p + j * n, r_ptr + b * n, n);
      }
    }
  });
}

template <typename scalar_t>
void fwd_stacked(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                 at::Tensor& out) {
  const int64_t N = r.size(0), n = w1.size(1), h = w1.size(0), m = w2.size(0);
  const int64_t group = stacked_group(m, n, sizeof(scalar_t), N);
  const int64_t groups = (N + group - 1) / group;
  const auto opts = w1.options();
  const scalar_t* w2_ptr = w2.const_data_ptr<scalar_t>();
  const scalar_t* s_ptr = s.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();

  parallel_tasks(0, groups, [&](int64_t gbegin, int64_t gend) {
    at::Tensor a_buf = empty_poisoned({group * m, h}, opts);
    at::Tensor tile_buf = empty_poisoned({group * m, n}, opts);
    for (int64_t g = gbegin; g < gend; ++g) {
      const int64_t b0 = g * group, count = std::min(group, N - b0), rows = count * m;
      stack_masked_w2(w2_ptr, s_ptr, b0, count, m, h, a_buf.data_ptr<scalar_t>());
      at::Tensor tile = tile_buf.narrow(0, 0, rows);
      at::mm_out(tile, a_buf.narrow(0, 0, rows), w1);  // rows (b, j) of P_b
      const scalar_t* p = tile.const_data_ptr<scalar_t>();
      for (int64_t b = 0; b < count; ++b) {
        scalar_t* out_row = out_ptr + (b0 + b) * m;
        const scalar_t* srow = s_ptr + (b0 + b) * h;
        if (std::all_of(srow, srow + h, [](scalar_t v) { return v == scalar_t(0); })) {
          std::fill(out_row, out_row + m, scalar_t(0));  // P = 0, as in fwd_gathered (no 0 * inf)
          continue;
        }
        for (int64_t j = 0; j < m; ++j) out_row[j] = abs_dot(p + (b * m + j) * n, r_ptr + (b0 + b) * n, n);
      }
    }
  });
}

}  // namespace

void etb_radius_fwd_cpu(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                        at::Tensor& out) {
  if (w1.size(0) == 0 || w1.size(1) == 0) {  // no hidden units or no inputs: P = 0
    out.zero_();
    return;
  }
  const Strategy strategy = choose_strategy(w2.size(0));
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_radius_fwd_cpu", [&] {
    if (strategy == Strategy::kGathered) {
      fwd_gathered<scalar_t>(w1, w2, s, r, out);
    } else {
      fwd_stacked<scalar_t>(w1, w2, s, r, out);
    }
  });
}

}  // namespace etbk::cpu
