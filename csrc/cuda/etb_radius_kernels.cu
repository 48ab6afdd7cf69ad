// Fused CUDA kernels for the ETB radius (see etb_radius_kernels.h and docs/math.md, "The ETB block").
//
// Forward: radius[b, j] = sum_k |P_b[j, k]| r[b, k],  P_b = W2 S_b W1 = W2[:, act_b] W1[act_b, :].
// One CTA owns one sample b and BM consecutive output rows j. It walks the columns k in tiles of
// BN; for each k-tile it accumulates the (BM x BN) tile of P in registers over the active hidden
// units of b (BK at a time, staged in shared memory by cp.async: 2 stages on the FFMA path, 3 on
// the tensor-core paths), then folds |P| * r[k] into per-row partial sums kept in registers. P never reaches global memory. At the
// end the row partials are reduced across threads in a fixed order (shuffles, then a fixed
// loop over shared memory) and written once: no atomics, so results are bitwise reproducible.
//
// Operand staging: A^T = W2^T[act, j-tile] (rows of W2^T are contiguous in j) and
// B = W1[act, k-tile] (rows contiguous in k): both are "gather rows, copy a contiguous slab",
// which coalesces for any mask. Out-of-range rows (beyond the active count), columns (j >= m,
// k >= n) are zero-filled (cp.async src-size 0) and the epilogue skips k >= n and j >= m.
//
// Math paths (one kernel template each):
//   FFMA: fp32 or fp64 exact, TM x TN register micro-tile per thread.
//   TF32 / BF16: mma.sync.m16n8k8 (tf32) / m16n8k16 (bf16) with fp32 accumulators; operands are
//   kept in fp32 in shared memory. TF32 operands are rounded to nearest once, before the kernel
//   (round_to_tf32); BF16 ones are rounded to nearest when packed into fragments.
#include "cuda/etb_radius_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace etbk::cuda {

const char* radius_path_name(RadiusPath p) {
  switch (p) {
    case RadiusPath::kFFMA: return "ffma";
    case RadiusPath::kTF32: return "tf32";
    case RadiusPath::kBF16: return "bf16";
  }
  return "?";
}

namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------- active-index compaction
// One CTA per sample; chunks of kThreads hidden units; warp ballots give each active unit its
// rank. idx[b, p] = p-th active unit (p < count), -1 for p >= count; pos[b, i] = rank or -1.
template <typename T>
__global__ void __launch_bounds__(kThreads) compact_active_kernel(const T* __restrict__ s, int64_t h,
                                                                  int32_t* __restrict__ idx,
                                                                  int32_t* __restrict__ pos,
                                                                  int32_t* __restrict__ count) {
  __shared__ int32_t warp_total[kThreads / 32];
  const int64_t b = blockIdx.x;
  const T* srow = s + b * h;
  int32_t* irow = idx + b * h;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int32_t base = 0;
  for (int64_t i0 = 0; i0 < h; i0 += kThreads) {
    const int64_t i = i0 + threadIdx.x;
    const bool active = i < h && srow[i] != T(0);
    const unsigned ballot = __ballot_sync(0xffffffffu, active);
    const int32_t rank_in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_total[warp] = __popc(ballot);
    __syncthreads();
    int32_t offset = base, total = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      if (w < warp) offset += warp_total[w];
      total += warp_total[w];
    }
    if (active) irow[offset + rank_in_warp] = static_cast<int32_t>(i);
    if (pos != nullptr && i < h) pos[b * h + i] = active ? offset + rank_in_warp : -1;
    base += total;
    __syncthreads();  // warp_total is rewritten by the next chunk
  }
  for (int64_t p = base + threadIdx.x; p < h; p += kThreads) irow[p] = -1;
  if (threadIdx.x == 0) count[b] = base;
}

// ---------------------------------------------------------------- cp.async helpers
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies BYTES (4, 8 or 16) from global to shared; when !valid the destination is zero-filled and
// nothing is read (src-size 0; the source address is still a valid one).
template <int BYTES>
__device__ __forceinline__ void cp_async_zfill(void* dst, const void* src, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async size");
  const int src_bytes = valid ? BYTES : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(BYTES),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Stages one pipeline step: the BK active hidden units i0..i0+BK-1 of sample b (their global
// indices from idx) for output rows j0..j0+BM-1 (A^T, from w2t) and columns k0..k0+BN-1 (B,
// from w1). V = elements per cp.async; the host guarantees m % V == 0, n % V == 0 and aligned
// bases when V > 1, so a vector is either fully inside or fully outside the matrix.
template <typename T, int BM, int BN, int BK, int LDA, int LDB, int V>
__device__ __forceinline__ void load_stage(T* As, T* Bs, const T* __restrict__ w1, const T* __restrict__ w2t,
                                           const int32_t* __restrict__ idx_row, int32_t cnt, int64_t i0,
                                           int64_t j0, int64_t k0, int64_t n, int64_t m) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  constexpr int AV = BM / V, BV = BN / V;  // vectors per row
  static_assert((BK * AV) % kThreads == 0 && (BK * BV) % kThreads == 0, "tile / thread mismatch");
#pragma unroll
  for (int q = 0; q < (BK * AV) / kThreads; ++q) {
    const int e = threadIdx.x + q * kThreads;
    const int row = e / AV, col = (e % AV) * V;
    const int64_t p = i0 + row;
    const int64_t j = j0 + col;
    const bool valid = p < cnt && j < m;
    const T* src = w2t;
    if (valid) src = w2t + static_cast<int64_t>(__ldg(idx_row + p)) * m + j;
    cp_async_zfill<kBytes>(As + row * LDA + col, src, valid);
  }
#pragma unroll
  for (int q = 0; q < (BK * BV) / kThreads; ++q) {
    const int e = threadIdx.x + q * kThreads;
    const int row = e / BV, col = (e % BV) * V;
    const int64_t p = i0 + row;
    const int64_t k = k0 + col;
    const bool valid = p < cnt && k < n;
    const T* src = w1;
    if (valid) src = w1 + static_cast<int64_t>(__ldg(idx_row + p)) * n + k;
    cp_async_zfill<kBytes>(Bs + row * LDB + col, src, valid);
  }
}

// ---------------------------------------------------------------- FFMA path (fp32 / fp64 exact)
// 256 threads as a 16 x 16 grid; each thread owns TM rows (two runs of TM/2 at ty*TM/2 and
// BM/2 + ty*TM/2) and TN columns (likewise), read from shared memory as short vectors.
template <typename T, int BM, int BN, int BK, int V>
struct FfmaCfg {
  static constexpr int TM = BM / 16, TN = BN / 16;
  // Rows padded by 16 bytes: rows stay 16-byte aligned for cp.async and banks rotate.
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));
  static constexpr int LDA = BM + kPad, LDB = BN + kPad;
  static constexpr int kStageElems = BK * LDA + BK * LDB;
  static constexpr size_t kSmemBytes = 2 * kStageElems * sizeof(T);
};

template <typename T, int BM, int BN, int BK, int V>
__global__ void __launch_bounds__(kThreads, (V > 1 || sizeof(T) == 8 ? 2 : 1)) radius_fwd_ffma_kernel(const T* __restrict__ w1,
                                                                   const T* __restrict__ w2t,
                                                                   const int32_t* __restrict__ idx,
                                                                   const int32_t* __restrict__ count,
                                                                   const T* __restrict__ r, T* __restrict__ out,
                                                                   int64_t n, int64_t h, int64_t m) {
  using Cfg = FfmaCfg<T, BM, BN, BK, V>;
  constexpr int TM = Cfg::TM, TN = Cfg::TN, LDA = Cfg::LDA, LDB = Cfg::LDB;
  constexpr int HM = TM / 2, HN = TN / 2;
  static_assert(TM % 2 == 0 && TN % 2 == 0, "micro tile");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);

  const int64_t b = blockIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int32_t cnt = count[b];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  T* out_row = out + b * m;

  if (cnt == 0) {  // P = 0: radius 0 (as the CPU kernel; avoids 0 * inf from an infinite r)
    for (int t = threadIdx.x; t < BM; t += kThreads)
      if (j0 + t < m) out_row[j0 + t] = T(0);
    return;
  }
  const int32_t* idx_row = idx + b * h;
  const T* r_row = r + b * n;
  const int KT = (cnt + BK - 1) / BK;                       // steps over active units
  const int NKT = static_cast<int>((n + BN - 1) / BN);      // column tiles
  const int64_t steps = static_cast<int64_t>(KT) * NKT;

  T acc[TM][TN];
  T rowsum[TM];
#pragma unroll
  for (int a = 0; a < TM; ++a) {
    rowsum[a] = T(0);
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[a][c] = T(0);
  }

  auto stage_a = [&](int st) { return smem + st * Cfg::kStageElems; };
  auto stage_b = [&](int st) { return smem + st * Cfg::kStageElems + BK * LDA; };

  load_stage<T, BM, BN, BK, LDA, LDB, V>(stage_a(0), stage_b(0), w1, w2t, idx_row, cnt, 0, j0, 0, n, m);
  cp_async_commit();

  // (column tile, active-unit tile) of the next step to load, and the current column tile's
  // first column: counters, not 64-bit divisions (hundreds of integer instructions per step).
  int ld_it = 0, ld_kt = 0, cur_it = 0;
  int64_t cur_k0 = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const int st = static_cast<int>(step & 1);
    if (step + 1 < steps) {
      if (++ld_it == KT) {
        ld_it = 0;
        ++ld_kt;
      }
      load_stage<T, BM, BN, BK, LDA, LDB, V>(stage_a(st ^ 1), stage_b(st ^ 1), w1, w2t, idx_row, cnt,
                                             static_cast<int64_t>(ld_it) * BK, j0,
                                             static_cast<int64_t>(ld_kt) * BN, n, m);
    }
    cp_async_commit();  // possibly empty group: keeps the group count uniform
    cp_async_wait<1>();
    __syncthreads();

    const T* As = stage_a(st);
    const T* Bs = stage_b(st);
#pragma unroll 4
    for (int kk = 0; kk < BK; ++kk) {
      T av[TM], bv[TN];
#pragma unroll
      for (int a = 0; a < HM; ++a) {
        av[a] = As[kk * LDA + ty * HM + a];
        av[HM + a] = As[kk * LDA + BM / 2 + ty * HM + a];
      }
#pragma unroll
      for (int c = 0; c < HN; ++c) {
        bv[c] = Bs[kk * LDB + tx * HN + c];
        bv[HN + c] = Bs[kk * LDB + BN / 2 + tx * HN + c];
      }
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[a][c] = fma(av[a], bv[c], acc[a][c]);
    }
    __syncthreads();  // the next iteration's cp.async overwrites this stage

    if (++cur_it == KT) {  // P tile of the column tile complete: epilogue
      cur_it = 0;
      const int64_t k0 = cur_k0;
      cur_k0 += BN;
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int64_t k = k0 + (c < HN ? tx * HN + c : BN / 2 + tx * HN + (c - HN));
        if (k < n) {
          const T rk = __ldg(r_row + k);
#pragma unroll
          for (int a = 0; a < TM; ++a) rowsum[a] += fabs(acc[a][c]) * rk;
        }
      }
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[a][c] = T(0);
    }
  }
  cp_async_wait<0>();

  // Rows of thread (tx, ty) are shared by the 16 threads with the same ty: one half warp.
#pragma unroll
  for (int a = 0; a < TM; ++a) {
    T v = rowsum[a];
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    rowsum[a] = v;
  }
  if (tx == 0) {
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int64_t j = j0 + (a < HM ? ty * HM + a : BM / 2 + ty * HM + (a - HM));
      if (j < m) out_row[j] = rowsum[a];
    }
  }
}

// ---------------------------------------------------------------- tensor-core paths
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Tile 128 x 128 x 32, 8 warps as 2 (rows) x 4 (columns), warp tile 64 x 32 = 4 x 4 mma tiles,
// a 3-stage cp.async pipeline (2 CTAs per SM on the 16-byte loader: 2 x 102 KB of shared memory).
//
// Fragment-to-shared-memory permutation: rows j and columns k of the P tile are independent until
// the epilogue, so which smem row / column feeds which mma fragment element is ours to choose (the
// epilogue and the reduction use the same map). A thread's 8 fragment rows (4 mma tiles x rows g,
// g + 8) are two runs of 4 consecutive smem rows and its 4 fragment columns (4 mma tiles, column
// g) are 4 consecutive smem columns, so every fragment comes from 128-bit shared loads: 6 LDS.128
// per 16 mma (TF32) instead of 24 scalar loads. The row pitch LD = 128 + 8 words (TF32) or
// 128 + 4 (BF16) puts the 8 lanes of each quarter-warp vector load on distinct banks.
// TF32 operands are rounded once on the host side (round_to_tf32), not per fragment.
struct MmaCfg {
  static constexpr int BM = 128, BN = 128, BK = 32, kStages = 3;
  static constexpr int WM = 64, WN = 32, MT = WM / 16, NT = WN / 8;
  static constexpr int WARPS_N = BN / WN;
  static_assert((BM / WM) * (BN / WN) * 32 == kThreads, "warp layout");
  static_assert(MT == 4 && NT == 4, "the fragment permutation below assumes 4 x 4 mma tiles per warp");
};
template <bool kBF16>
struct MmaLayout {
  static constexpr int LDA = MmaCfg::BM + (kBF16 ? 4 : 8), LDB = MmaCfg::BN + (kBF16 ? 4 : 8);
  static constexpr int kStageElems = MmaCfg::BK * LDA + MmaCfg::BK * LDB;
  static constexpr size_t kSmemBytes = MmaCfg::kStages * kStageElems * sizeof(float);
};

// Row (within the warp's 64) of mma tile a's fragment row g + 8 * hlf: tiles 0, 1 use rows
// 4g..4g+3, tiles 2, 3 use 32 + 4g..32 + 4g + 3.
__device__ __forceinline__ int frag_row(int a, int g, int hlf) { return (a >> 1) * 32 + 4 * g + 2 * (a & 1) + hlf; }
// Column (within the warp's 32) of mma tile c's fragment column q (0..7).
__device__ __forceinline__ int frag_col(int c, int q) { return 4 * q + c; }

__device__ __forceinline__ float4 lds4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float comp(const float4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

template <bool kBF16, int V>
__global__ void __launch_bounds__(kThreads, (V > 1 ? 2 : 1)) radius_fwd_mma_kernel(const float* __restrict__ w1,
                                                                  const float* __restrict__ w2t,
                                                                  const int32_t* __restrict__ idx,
                                                                  const int32_t* __restrict__ count,
                                                                  const float* __restrict__ r,
                                                                  float* __restrict__ out, int64_t n, int64_t h,
                                                                  int64_t m) {
  using L = MmaLayout<kBF16>;
  constexpr int BM = MmaCfg::BM, BN = MmaCfg::BN, BK = MmaCfg::BK, LDA = L::LDA, LDB = L::LDB;
  constexpr int MT = MmaCfg::MT, NT = MmaCfg::NT, WM = MmaCfg::WM, WN = MmaCfg::WN, S = MmaCfg::kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* smem = reinterpret_cast<float*>(smem_raw);

  const int64_t b = blockIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int32_t cnt = count[b];
  float* out_row = out + b * m;
  if (cnt == 0) {  // P = 0: radius 0 (no 0 * inf from an infinite r)
    for (int t = threadIdx.x; t < BM; t += kThreads)
      if (j0 + t < m) out_row[j0 + t] = 0.f;
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int warp_m = warp / MmaCfg::WARPS_N, warp_n = warp % MmaCfg::WARPS_N;
  const int wm0 = warp_m * WM, wn0 = warp_n * WN;

  const int32_t* idx_row = idx + b * h;
  const float* r_row = r + b * n;
  const int KT = (cnt + BK - 1) / BK;
  const int NKT = static_cast<int>((n + BN - 1) / BN);
  const int64_t steps = static_cast<int64_t>(KT) * NKT;

  float acc[MT][NT][4];
  float rowsum[MT][2];
#pragma unroll
  for (int a = 0; a < MT; ++a) {
    rowsum[a][0] = rowsum[a][1] = 0.f;
#pragma unroll
    for (int c = 0; c < NT; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][c][e] = 0.f;
  }
  // Pipeline steps run over (column tile kt, active-unit tile it), it fastest; step s lives in
  // slot s % S. Counters instead of 64-bit divisions: those cost hundreds of integer
  // instructions per step.
  int ld_it = 0, ld_kt = 0, ld_slot = 0;  // the next step to load
  auto issue_next = [&]() {
    float* a = smem + ld_slot * L::kStageElems;
    load_stage<float, BM, BN, BK, LDA, LDB, V>(a, a + BK * LDA, w1, w2t, idx_row, cnt,
                                               static_cast<int64_t>(ld_it) * BK, j0,
                                               static_cast<int64_t>(ld_kt) * BN, n, m);
    if (++ld_it == KT) {
      ld_it = 0;
      ++ld_kt;
    }
    ld_slot = ld_slot == S - 1 ? 0 : ld_slot + 1;
  };
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < steps) issue_next();
    cp_async_commit();  // possibly empty group: keeps the group count uniform
  }

  int cur_it = 0, cur_slot = 0;
  int64_t cur_k0 = wn0;  // first column of this warp in the current column tile
  for (int64_t step = 0; step < steps; ++step) {
    cp_async_wait<S - 2>();
    // Step's stage has landed for every thread, and every warp is done with step - 1, whose
    // slot the next issue refills.
    __syncthreads();
    if (step + S - 1 < steps) issue_next();
    cp_async_commit();

    const float* As = smem + cur_slot * L::kStageElems + wm0 + 4 * g;  // + k * LDA: tiles 0, 1; + 32: 2, 3
    const float* Bs = smem + cur_slot * L::kStageElems + BK * LDA + wn0 + 4 * g;  // + k * LDB: tiles 0..3
    if constexpr (!kBF16) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 8) {
        // m16n8k8 tf32: a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4); b0 (t, g) b1 (t+4, g)
        const float4 lo0 = lds4(As + (kk + t4) * LDA), hi0 = lds4(As + (kk + t4) * LDA + 32);
        const float4 lo1 = lds4(As + (kk + t4 + 4) * LDA), hi1 = lds4(As + (kk + t4 + 4) * LDA + 32);
        const float4 b0 = lds4(Bs + (kk + t4) * LDB), b1 = lds4(Bs + (kk + t4 + 4) * LDB);
        uint32_t af[MT][4], bfr[NT][2];
#pragma unroll
        for (int a = 0; a < MT; ++a) {
          const float4& x0 = a < 2 ? lo0 : hi0;
          const float4& x1 = a < 2 ? lo1 : hi1;
          const int q = 2 * (a & 1);
          af[a][0] = __float_as_uint(comp(x0, q));
          af[a][1] = __float_as_uint(comp(x0, q + 1));
          af[a][2] = __float_as_uint(comp(x1, q));
          af[a][3] = __float_as_uint(comp(x1, q + 1));
        }
#pragma unroll
        for (int c = 0; c < NT; ++c) {
          bfr[c][0] = __float_as_uint(comp(b0, c));
          bfr[c][1] = __float_as_uint(comp(b1, c));
        }
#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
          for (int c = 0; c < NT; ++c) mma_tf32(acc[a][c], af[a], bfr[c]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        // m16n8k16 bf16: a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..);
        // b0 (2t..2t+1, g) b1 (2t+8.., g). Rows of k: kl, kl + 1, kl + 8, kl + 9.
        const int kl = kk + 2 * t4;
        float4 lo[4], hi[4], bv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int k = kl + (u & 1) + 8 * (u >> 1);
          lo[u] = lds4(As + k * LDA);
          hi[u] = lds4(As + k * LDA + 32);
          bv[u] = lds4(Bs + k * LDB);
        }
        uint32_t af[MT][4], bfr[NT][2];
#pragma unroll
        for (int a = 0; a < MT; ++a) {
          const float4* x = a < 2 ? lo : hi;
          const int q = 2 * (a & 1);
          af[a][0] = pack_bf16(comp(x[0], q), comp(x[1], q));
          af[a][1] = pack_bf16(comp(x[0], q + 1), comp(x[1], q + 1));
          af[a][2] = pack_bf16(comp(x[2], q), comp(x[3], q));
          af[a][3] = pack_bf16(comp(x[2], q + 1), comp(x[3], q + 1));
        }
#pragma unroll
        for (int c = 0; c < NT; ++c) {
          bfr[c][0] = pack_bf16(comp(bv[0], c), comp(bv[1], c));
          bfr[c][1] = pack_bf16(comp(bv[2], c), comp(bv[3], c));
        }
#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
          for (int c = 0; c < NT; ++c) mma_bf16(acc[a][c], af[a], bfr[c]);
      }
    }

    cur_slot = cur_slot == S - 1 ? 0 : cur_slot + 1;
    if (++cur_it == KT) {  // epilogue of the column tile: rowsum += |P| r over valid k
      cur_it = 0;
#pragma unroll
      for (int c = 0; c < NT; ++c) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t k = cur_k0 + frag_col(c, 2 * t4 + e);  // accumulator column 2t + e of tile c
          if (k < n) {
            const float rk = __ldg(r_row + k);
#pragma unroll
            for (int a = 0; a < MT; ++a) {
              rowsum[a][0] += fabsf(acc[a][c][e]) * rk;      // fragment row g
              rowsum[a][1] += fabsf(acc[a][c][2 + e]) * rk;  // fragment row g + 8
            }
          }
        }
      }
#pragma unroll
      for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int c = 0; c < NT; ++c)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[a][c][e] = 0.f;
      cur_k0 += BN;
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // all cp.async landed and all fragment reads done: smem is reusable

  // Reduce: the 4 lanes of a quad share rows (shuffles), then the WARPS_N warps of a row band
  // (fixed-order loop over shared memory).
  float* red = smem;  // [WARPS_N][BM]
#pragma unroll
  for (int a = 0; a < MT; ++a) {
#pragma unroll
    for (int hlf = 0; hlf < 2; ++hlf) {
      float v = rowsum[a][hlf];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if (t4 == 0) red[warp_n * BM + wm0 + frag_row(a, g, hlf)] = v;
    }
  }
  __syncthreads();
  for (int row = threadIdx.x; row < BM; row += kThreads) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < MmaCfg::WARPS_N; ++w) v += red[w * BM + row];
    if (j0 + row < m) out_row[j0 + row] = v;
  }
}

// In-place round-to-nearest of fp32 values to TF32 (the 10-bit mantissa the tensor cores read).
__global__ void round_tf32_kernel(float* __restrict__ x, int64_t count) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * kThreads)
    x[e] = __uint_as_float(to_tf32(x[e]));
}

// ---------------------------------------------------------------- gather-sum (backward helper)
template <typename T>
__global__ void __launch_bounds__(kThreads) gather_sum_kernel(const T* __restrict__ x, const int32_t* __restrict__ pos,
                                                              T* __restrict__ out, int64_t C, int64_t hmax, int64_t h,
                                                              int64_t cols, bool accumulate) {
  const int64_t total = h * cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = e / cols, c = e % cols;
    T acc = T(0);
    for (int64_t b = 0; b < C; ++b) {
      const int32_t p = __ldg(pos + b * h + i);
      if (p >= 0) acc += x[(b * hmax + p) * cols + c];
    }
    out[e] = accumulate ? out[e] + acc : acc;
  }
}

// ---------------------------------------------------------------- host launchers
template <typename T>
cudaError_t compact_active_impl(const T* s, int64_t N, int64_t h, int32_t* idx, int32_t* pos, int32_t* count,
                                cudaStream_t st) {
  if (N <= 0) return cudaSuccess;
  if (N > 0x7fffffffLL) return cudaErrorInvalidValue;
  compact_active_kernel<T><<<static_cast<unsigned>(N), kThreads, 0, st>>>(s, h, idx, pos, count);
  return cudaGetLastError();
}

bool aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

template <typename T, typename Kernel>
cudaError_t launch(Kernel kernel, size_t smem, int BM, int64_t N, int64_t m, cudaStream_t st, const T* w1,
                   const T* w2t, const int32_t* idx, const int32_t* count, const T* r, T* out, int64_t n, int64_t h) {
  const int64_t row_tiles = (m + BM - 1) / BM;
  if (N > 0x7fffffffLL || row_tiles > 65535) return cudaErrorInvalidConfiguration;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(row_tiles));
  kernel<<<grid, kThreads, smem, st>>>(w1, w2t, idx, count, r, out, n, h, m);
  return cudaGetLastError();
}

}  // namespace

cudaError_t compact_active(const float* s, int64_t N, int64_t h, int32_t* idx, int32_t* pos, int32_t* count,
                           cudaStream_t st) {
  return compact_active_impl(s, N, h, idx, pos, count, st);
}
cudaError_t compact_active(const double* s, int64_t N, int64_t h, int32_t* idx, int32_t* pos, int32_t* count,
                           cudaStream_t st) {
  return compact_active_impl(s, N, h, idx, pos, count, st);
}

cudaError_t round_to_tf32(float* x, int64_t count, cudaStream_t st) {
  if (count <= 0) return cudaSuccess;
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  round_tf32_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), kThreads, 0, st>>>(x, count);
  return cudaGetLastError();
}

int radius_fwd_rows_per_cta(bool is_double, RadiusPath path) {
  if (is_double) return 64;
  return path == RadiusPath::kFFMA ? 128 : MmaCfg::BM;
}

cudaError_t radius_fwd(const float* w1, const float* w2t, const int32_t* idx, const int32_t* count, const float* r,
                       float* out, int64_t N, int64_t n, int64_t h, int64_t m, RadiusPath path, cudaStream_t st) {
  if (N <= 0 || m <= 0) return cudaSuccess;
  const bool vec = (n % 4 == 0) && (m % 4 == 0) && aligned(w1, 16) && aligned(w2t, 16);
  if (path == RadiusPath::kFFMA) {
    using C4 = FfmaCfg<float, 128, 128, 16, 4>;
    using C1 = FfmaCfg<float, 128, 128, 16, 1>;
    return vec ? launch(radius_fwd_ffma_kernel<float, 128, 128, 16, 4>, C4::kSmemBytes, 128, N, m, st, w1, w2t, idx,
                        count, r, out, n, h)
               : launch(radius_fwd_ffma_kernel<float, 128, 128, 16, 1>, C1::kSmemBytes, 128, N, m, st, w1, w2t, idx,
                        count, r, out, n, h);
  }
  if (path == RadiusPath::kTF32) {
    return vec ? launch(radius_fwd_mma_kernel<false, 4>, MmaLayout<false>::kSmemBytes, MmaCfg::BM, N, m, st, w1, w2t, idx,
                        count, r, out, n, h)
               : launch(radius_fwd_mma_kernel<false, 1>, MmaLayout<false>::kSmemBytes, MmaCfg::BM, N, m, st, w1, w2t, idx,
                        count, r, out, n, h);
  }
  return vec ? launch(radius_fwd_mma_kernel<true, 4>, MmaLayout<true>::kSmemBytes, MmaCfg::BM, N, m, st, w1, w2t, idx, count,
                      r, out, n, h)
             : launch(radius_fwd_mma_kernel<true, 1>, MmaLayout<true>::kSmemBytes, MmaCfg::BM, N, m, st, w1, w2t, idx, count,
                      r, out, n, h);
}

cudaError_t radius_fwd(const double* w1, const double* w2t, const int32_t* idx, const int32_t* count,
                       const double* r, double* out, int64_t N, int64_t n, int64_t h, int64_t m, RadiusPath /*path*/,
                       cudaStream_t st) {
  if (N <= 0 || m <= 0) return cudaSuccess;
  const bool vec = (n % 2 == 0) && (m % 2 == 0) && aligned(w1, 16) && aligned(w2t, 16);
  using C2 = FfmaCfg<double, 64, 64, 16, 2>;
  using C1 = FfmaCfg<double, 64, 64, 16, 1>;
  return vec ? launch(radius_fwd_ffma_kernel<double, 64, 64, 16, 2>, C2::kSmemBytes, 64, N, m, st, w1, w2t, idx,
                      count, r, out, n, h)
             : launch(radius_fwd_ffma_kernel<double, 64, 64, 16, 1>, C1::kSmemBytes, 64, N, m, st, w1, w2t, idx,
                      count, r, out, n, h);
}

template <typename T>
static cudaError_t gather_sum_impl(const T* x, const int32_t* pos, T* out, int64_t C, int64_t hmax, int64_t h,
                                   int64_t cols, bool accumulate, cudaStream_t st) {
  const int64_t total = h * cols;
  if (total <= 0) return cudaSuccess;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 * 16 ? blocks : 65536 * 16);
  gather_sum_kernel<T><<<grid, kThreads, 0, st>>>(x, pos, out, C, hmax, h, cols, accumulate);
  return cudaGetLastError();
}

cudaError_t gather_sum(const float* x, const int32_t* pos, float* out, int64_t C, int64_t hmax, int64_t h,
                       int64_t cols, bool accumulate, cudaStream_t st) {
  return gather_sum_impl(x, pos, out, C, hmax, h, cols, accumulate, st);
}
cudaError_t gather_sum(const double* x, const int32_t* pos, double* out, int64_t C, int64_t hmax, int64_t h,
                       int64_t cols, bool accumulate, cudaStream_t st) {
  return gather_sum_impl(x, pos, out, C, hmax, h, cols, accumulate, st);
}

}  // namespace etbk::cuda
