// How the CPU kernels cut the work, chosen per call.
//
// gathered: per sample, copy the rows of W1 (and W2^T) of the ReLUs that are active, then
//   P_n = W2[:, act] W1[act, :] in tiles of output rows. Flops scale with the active fraction,
//   but the gather moves h_act * n numbers per sample: worth it when m is large.
// stacked: stack the masked rows W2[j, :] * s[b, :] of several samples into one tile and multiply
//   by the dense W1. No gather, full flops, and a tall matmul even when m is small (the logits).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

namespace etbk::cpu {

enum class Strategy { kGathered, kStacked };

// ETBK_CPU_STRATEGY=gathered|stacked forces one (tests run both on every shape).
inline Strategy choose_strategy(int64_t m) {
  if (const char* v = std::getenv("ETBK_CPU_STRATEGY")) {
    if (std::strcmp(v, "gathered") == 0) return Strategy::kGathered;
    if (std::strcmp(v, "stacked") == 0) return Strategy::kStacked;
  }
  return m >= 32 ? Strategy::kGathered : Strategy::kStacked;
}

// Rows of P per tile: a (rows x n) tile should stay in L2 while it is reduced. The target size
// (KiB) can be tuned with ETBK_CPU_TILE_KB; 256 KiB suits 512 KiB-1 MiB L2 caches.
inline int64_t tile_rows(int64_t m, int64_t n, size_t elem_size) {
  static const int64_t target_bytes = [] {
    const char* v = std::getenv("ETBK_CPU_TILE_KB");
    const int64_t kb = v ? std::atoll(v) : 0;
    return (kb > 0 ? kb : 256) * 1024;
  }();
  int64_t rows = target_bytes / std::max<int64_t>(1, n * static_cast<int64_t>(elem_size));
  rows = std::max<int64_t>(16, (rows / 8) * 8);
  return std::min(rows, m);
}

// Samples per stacked tile: about 4 tiles' worth of rows (a taller matmul amortizes BLAS's
// packing of W1 better than an L2-sized tile; measured in bench/), at least one sample, and
// at most N / threads so that every thread gets a group.
inline int64_t stacked_group(int64_t m, int64_t n, size_t elem_size, int64_t N) {
  const int64_t mm = std::max<int64_t>(m, 1), NN = std::max<int64_t>(N, 1);
  const int64_t rows = 4 * tile_rows(mm * NN, n, elem_size);
  const int64_t per_thread = (NN + at::get_num_threads() - 1) / at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(per_thread, rows / mm));
}

// at::parallel_for over [begin, end) in tasks of >= 1 item, with autograd kept out of the ATen
// calls the tasks make (thread-local dispatch state does not follow work onto pool threads).
template <typename F>
void parallel_tasks(int64_t begin, int64_t end, const F& f) {
  at::parallel_for(begin, end, 1, [&](int64_t b, int64_t e) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    f(b, e);
  });
}

}  // namespace etbk::cpu
