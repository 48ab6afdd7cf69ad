// Torch-free interface of the fused CUDA kernels for the ETB radius
//     radius[b, j] = sum_k | sum_i W2[j, i] s[b, i] W1[i, k] | r[b, k].
// The kernels (etb_radius_kernels.cu) include only CUDA headers, so nvcc compiles them in
// seconds; the ATen glue and the op registration live in etb_cuda.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace etbk::cuda {

// How the inner products of P = W2 S W1 are computed.
enum class RadiusPath : int {
  kFFMA = 0,  // exact fp32 (or fp64) fused multiply-adds on CUDA cores
  kTF32 = 1,  // tensor cores, mma.sync m16n8k8 TF32 inputs (pre-rounded to nearest), fp32 accumulation
  kBF16 = 2,  // tensor cores, mma.sync m16n8k16 BF16 inputs (round-to-nearest), fp32 accumulation
};

const char* radius_path_name(RadiusPath p);

// Per sample b: idx[b, 0:count[b]] = the hidden units i with s[b, i] != 0, ascending, and
// idx[b, p] = -1 for p >= count[b]; pos[b, i] = the rank of i among them, -1 if inactive (pos may
// be nullptr). s: (N, h) contiguous; idx, pos: (N, h) int32; count: (N,) int32. N < 2^31, h < 2^31.
cudaError_t compact_active(const float* s, int64_t N, int64_t h, int32_t* idx, int32_t* pos, int32_t* count,
                           cudaStream_t st);
cudaError_t compact_active(const double* s, int64_t N, int64_t h, int32_t* idx, int32_t* pos, int32_t* count,
                           cudaStream_t st);

// Forward radius. w1: (h, n), w2t: (m, h)^T = (h, m), r: (N, n), out: (N, m); all contiguous.
// idx/count from compact_active. Requires N <= 2^31 - 1, ceil(m / 128) <= 65535, h < 2^31.
// Deterministic: every output is reduced in a fixed order by one CTA (no atomics).
cudaError_t radius_fwd(const float* w1, const float* w2t, const int32_t* idx, const int32_t* count, const float* r,
                       float* out, int64_t N, int64_t n, int64_t h, int64_t m, RadiusPath path, cudaStream_t st);
cudaError_t radius_fwd(const double* w1, const double* w2t, const int32_t* idx, const int32_t* count,
                       const double* r, double* out, int64_t N, int64_t n, int64_t h, int64_t m, RadiusPath path,
                       cudaStream_t st);

// Rounds x[0:count] in place to TF32 (round to nearest, ties away, as cvt.rna.tf32.f32). The
// TF32 path of radius_fwd reads its operands' bits as TF32: the host rounds w1 / w2t with this.
cudaError_t round_to_tf32(float* x, int64_t count, cudaStream_t st);

// Row tile (output rows j per CTA) of radius_fwd for a path: the host checks grid limits with it.
int radius_fwd_rows_per_cta(bool is_double, RadiusPath path);

// Deterministic gather-sum used by the backward: for every hidden unit i and column c < cols,
//     out[i, c] (+)= sum_{b < C, pos[b, i] >= 0} x[b, pos[b, i], c]
// in increasing b. x: (C, hmax, cols), pos: (C, h) int32 (-1 = inactive), out: (h, cols).
// accumulate = false overwrites out, true adds to it.
cudaError_t gather_sum(const float* x, const int32_t* pos, float* out, int64_t C, int64_t hmax, int64_t h,
                       int64_t cols, bool accumulate, cudaStream_t st);
cudaError_t gather_sum(const double* x, const int32_t* pos, double* out, int64_t C, int64_t hmax, int64_t h,
                       int64_t cols, bool accumulate, cudaStream_t st);

}  // namespace etbk::cuda
