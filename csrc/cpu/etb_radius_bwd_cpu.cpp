// Backward of the radius: recomputes P tile by tile (never stored) and, with
// T = G * r * sign(P), accumulates dr = G^T |P|, dW1 = sum_n S_n W2^T T_n and
// dW2 = sum_n T_n W1^T S_n (see docs/math.md, "Gradients").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/active_rows.h"
#include "cpu/etb_radius_cpu.h"
#include "cpu/strategy.h"
#include "cpu/tile_epilogue.h"
#include "poison.h"

namespace etbk::cpu {
namespace {

struct Inputs {
  const at::Tensor &grad, &w1, &w2, &s, &r;
  at::Tensor& dr;
};

// Weight gradients are sums over samples: each chunk of samples accumulates its own partial
// sums, added in chunk order at the end, so the result does not depend on thread timing.
template <typename ChunkFn>
void over_sample_chunks(const Inputs& in, at::Tensor& dw1, at::Tensor& dw2, ChunkFn chunk_fn) {
  const int64_t N = in.r.size(0);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(N, at::get_num_threads()));
  std::vector<at::Tensor> dw1_part(chunks), dw2_part(chunks);
  parallel_tasks(0, chunks, [&](int64_t cbegin, int64_t cend) {
    for (int64_t c = cbegin; c < cend; ++c) {
      dw1_part[c] = at::zeros(dw1.sizes(), dw1.options());
      dw2_part[c] = at::zeros(dw2.sizes(), dw2.options());
      chunk_fn(c * N / chunks, (c + 1) * N / chunks, dw1_part[c], dw2_part[c]);
    }
  });
  dw1.copy_(dw1_part[0]);
  dw2.copy_(dw2_part[0]);
  for (int64_t c = 1; c < chunks; ++c) {
    dw1.add_(dw1_part[c]);
    dw2.add_(dw2_part[c]);
  }
}

template <typename scalar_t>
void bwd_gathered(const Inputs& in, at::Tensor& dw1, at::Tensor& dw2) {
  const int64_t n = in.w1.size(1), h = in.w1.size(0), m = in.w2.size(0);
  const at::Tensor w2t = in.w2.t().contiguous();
  const int64_t bm = tile_rows(m, n, sizeof(scalar_t));
  const auto opts = in.w1.options();
  const scalar_t* s_ptr = in.s.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = in.r.const_data_ptr<scalar_t>();
  const scalar_t* g_ptr = in.grad.const_data_ptr<scalar_t>();
  scalar_t* dr_ptr = in.dr.data_ptr<scalar_t>();

  over_sample_chunks(in, dw1, dw2, [&](int64_t begin, int64_t end, at::Tensor& dw1_acc, at::Tensor& dw2_acc) {
    ActiveRows<scalar_t> act(h, n, m, opts);
    at::Tensor tile_buf = empty_poisoned({bm, n}, opts);
    at::Tensor dw2_tile_buf = empty_poisoned({bm, h}, opts);
    at::Tensor dw1a_buf = empty_poisoned({h, n}, opts);
    scalar_t* dw1_acc_ptr = dw1_acc.data_ptr<scalar_t>();
    scalar_t* dw2_acc_ptr = dw2_acc.data_ptr<scalar_t>();
    for (int64_t b = begin; b < end; ++b) {
      act.gather(s_ptr + b * h, in.w1, w2t);
      const int64_t ha = act.count;
      if (ha == 0) continue;  // P = 0: no gradient; the dr row stays 0
      const at::Tensor a = act.w1_active(), bt = act.w2t_active();
      at::Tensor dw1a = dw1a_buf.narrow(0, 0, ha);
      for (int64_t j0 = 0; j0 < m; j0 += bm) {
        const int64_t rows = std::min(bm, m - j0);
        at::Tensor tile = tile_buf.narrow(0, 0, rows);
        const at::Tensor bt_tile = bt.narrow(1, j0, rows);  // (ha, rows) = W2[j0:j0+rows, act]^T
        at::mm_out(tile, bt_tile.t(), a);
        scalar_t* p = tile.data_ptr<scalar_t>();
        for (int64_t j = 0; j < rows; ++j) row_backward(p + j * n, g_ptr[b * m + j0 + j], r_ptr + b * n, dr_ptr + b * n, n);
        // dW2[j, act] += (T W1a^T)[j, :]   (rows of dw2_tile are strided by h)
        at::Tensor dw2_tile = dw2_tile_buf.narrow(0, 0, rows).narrow(1, 0, ha);
        at::mm_out(dw2_tile, tile, a.t());
        const scalar_t* t2 = dw2_tile.const_data_ptr<scalar_t>();
        for (int64_t j = 0; j < rows; ++j) {
          scalar_t* dst = dw2_acc_ptr + (j0 + j) * h;
          for (int64_t i = 0; i < ha; ++i) dst[act.index[i]] += t2[j * h + i];
        }
        // dW1[act, :] += W2[j0:, act]^T T
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
  });
}

template <typename scalar_t>
void bwd_stacked(const Inputs& in, at::Tensor& dw1, at::Tensor& dw2) {
  const int64_t N = in.r.size(0), n = in.w1.size(1), h = in.w1.size(0), m = in.w2.size(0);
  const int64_t group = stacked_group(m, n, sizeof(scalar_t), N);
  const auto opts = in.w1.options();
  const scalar_t* w2_ptr = in.w2.const_data_ptr<scalar_t>();
  const scalar_t* s_ptr = in.s.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = in.r.const_data_ptr<scalar_t>();
  const scalar_t* g_ptr = in.grad.const_data_ptr<scalar_t>();
  scalar_t* dr_ptr = in.dr.data_ptr<scalar_t>();

  over_sample_chunks(in, dw1, dw2, [&](int64_t begin, int64_t end, at::Tensor& dw1_acc, at::Tensor& dw2_acc) {
    at::Tensor a_buf = empty_poisoned({group * m, h}, opts);
    at::Tensor tile_buf = empty_poisoned({group * m, n}, opts);
    at::Tensor tw_buf = empty_poisoned({group * m, h}, opts);
    scalar_t* dw2_acc_ptr = dw2_acc.data_ptr<scalar_t>();
    for (int64_t b0 = begin; b0 < end; b0 += group) {
      const int64_t count = std::min(group, end - b0), rows = count * m;
      stack_masked_w2(w2_ptr, s_ptr, b0, count, m, h, a_buf.data_ptr<scalar_t>());
      const at::Tensor a = a_buf.narrow(0, 0, rows);
      at::Tensor tile = tile_buf.narrow(0, 0, rows);
      at::mm_out(tile, a, in.w1);
      scalar_t* p = tile.data_ptr<scalar_t>();
      for (int64_t b = 0; b < count; ++b)
        for (int64_t j = 0; j < m; ++j)
          row_backward(p + (b * m + j) * n, g_ptr[(b0 + b) * m + j], r_ptr + (b0 + b) * n, dr_ptr + (b0 + b) * n, n);
      // dW1 += A^T T (A already carries the mask); dW2[j, i] += s[b, i] (T W1^T)[(b, j), i]
      dw1_acc.addmm_(a.t(), tile);
      at::Tensor tw = tw_buf.narrow(0, 0, rows);
      at::mm_out(tw, tile, in.w1.t());
      const scalar_t* t2 = tw.const_data_ptr<scalar_t>();
      for (int64_t b = 0; b < count; ++b) {
        const scalar_t* srow = s_ptr + (b0 + b) * h;
        for (int64_t j = 0; j < m; ++j) {
          scalar_t* dst = dw2_acc_ptr + j * h;
          const scalar_t* src = t2 + (b * m + j) * h;
#pragma omp simd
          for (int64_t i = 0; i < h; ++i) dst[i] += src[i] * srow[i];
        }
      }
    }
  });
}

}  // namespace

void etb_radius_bwd_cpu(const at::Tensor& grad, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
                        const at::Tensor& r, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2) {
  const Inputs in{grad, w1, w2, s, r, dr};
  const Strategy strategy = choose_strategy(w2.size(0));
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_radius_bwd_cpu", [&] {
    if (strategy == Strategy::kGathered) {
      bwd_gathered<scalar_t>(in, dw1, dw2);
    } else {
      bwd_stacked<scalar_t>(in, dw1, dw2);
    }
  });
}

}  // namespace etbk::cpu
