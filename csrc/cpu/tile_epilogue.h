// Epilogues applied to a tile of P = W2 S W1 while it is in cache (forward and backward).
#pragma once

#include <cmath>
#include <cstdint>

namespace etbk::cpu {

// out[j] = sum_k |tile[j, k]| * r[k] for one row of P (n entries).
template <typename scalar_t>
inline scalar_t abs_dot(const scalar_t* p, const scalar_t* r, int64_t n) {
  scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += std::abs(p[k]) * r[k];
  return acc;
}

// Backward on one row of P, in place: dr[k] += g |P[k]|, then P[k] -> T[k] = g r[k] sign(P[k])
// (sign(0) = 0, so |.| has zero derivative at 0 as in torch.abs).
template <typename scalar_t>
inline void row_backward(scalar_t* p, const scalar_t g, const scalar_t* r, scalar_t* dr, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const scalar_t v = p[k];
    dr[k] += g * std::abs(v);
    p[k] = g * r[k] * (scalar_t(v > 0) - scalar_t(v < 0));
  }
}

}  // namespace etbk::cpu
