// CUDA registrations of the etbkernels ops and the ATen glue around the fused kernels.
//
//  - etb_block: the device-generic etb_block_impl (checks, c1, mask, center via cuBLAS) with the
//    fused radius kernel of etb_radius_kernels.cu (no N x m x n temporary).
//  - etb_block_backward: etb_block_backward_impl with a *chunked* radius backward: per chunk of
//    samples it recomputes P on the active hidden units with cuBLAS (bmm), forms
//    T = G * r * sign(P) and dr, then dW1 / dW2 by bmm and a deterministic gather-sum. Extra
//    memory is bounded by a fixed budget (ETBK_CUDA_BWD_BUDGET_MB, default 512 MiB) plus
//    O(N * h) index arrays, never O(N * m * n).
//  - ibp_block / ibp_block_backward: the ATen composites of block_common.cpp (cuBLAS GEMMs).
//  - TF32 / BF16: when etbkernels/triton_radius.py has registered the Triton tensor-core ops
//    (tc_radius, tc_radius_grad, tc_weight_grad: wgmma on Hopper), the forward radius and the whole
//    radius backward run there (radius_bwd_tc); otherwise the mma.sync kernel and the cuBLAS
//    backward above. ETBK_CUDA_TC=mma forces the latter.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string>

#include "block_common.h"
#include "cuda/etb_radius_kernels.h"

namespace etbk::cuda {
namespace {

constexpr int64_t kInt32Max = 0x7fffffffLL;

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "etbkernels: CUDA error in ", what, ": ", cudaGetErrorString(err));
}

// The precision path for float32, following torch.get_float32_matmul_precision():
// "highest" -> exact fp32 FFMA, "high" -> TF32 tensor cores, "medium" -> BF16 tensor cores.
// ETBK_CUDA_RADIUS_PATH=ffma|tf32|bf16 overrides it (for tests and benchmarks).
RadiusPath float_path() {
  if (const char* env = std::getenv("ETBK_CUDA_RADIUS_PATH")) {
    const std::string v(env);
    if (v == "ffma" || v == "fp32" || v == "highest") return RadiusPath::kFFMA;
    if (v == "tf32" || v == "high") return RadiusPath::kTF32;
    if (v == "bf16" || v == "medium") return RadiusPath::kBF16;
    TORCH_CHECK_VALUE(v.empty(), "etbkernels: ETBK_CUDA_RADIUS_PATH must be ffma, tf32 or bf16, got '", v, "'");
  }
  switch (at::globalContext().float32MatmulPrecision()) {
    case at::Float32MatmulPrecision::HIGHEST: return RadiusPath::kFFMA;
    case at::Float32MatmulPrecision::HIGH: return RadiusPath::kTF32;
    case at::Float32MatmulPrecision::MEDIUM: return RadiusPath::kBF16;
  }
  return RadiusPath::kFFMA;
}

// Reads an environment switch: "" (unset) gives `fallback`, else one of `allowed`.
std::string env_choice(const char* var, std::initializer_list<const char*> allowed, const char* fallback) {
  const char* env = std::getenv(var);
  if (!env || !*env) return fallback;
  const std::string v(env);
  std::string names;
  for (const char* a : allowed) {
    if (v == a) return v;
    names += names.empty() ? a : std::string(" or ") + a;
  }
  TORCH_CHECK_VALUE(false, "etbkernels: ", var, " must be ", names, ", got '", v, "'");
  return fallback;
}

bool triton_registered(const at::Device& device) {
  const auto op = c10::Dispatcher::singleton().findOp(c10::OperatorName("etbkernels::tc_radius", ""));
  if (!op || !op->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) return false;
  int major = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index()), "cudaDeviceGetAttribute");
  return major >= 8;
}

// The Triton tensor-core kernels serve the TF32 / BF16 paths when Python registered them (Triton
// installed) on a GPU of compute capability >= 8.0, unless ETBK_CUDA_TC=mma. The exact-fp32 forward
// runs on the FFMA kernel of etb_radius_kernels.cu unless ETBK_CUDA_FFMA=triton asks for the Triton
// kernel with exact fp32 FMA products (a variant for the GPU benchmark; not yet measured).
bool use_triton(RadiusPath path, const at::Device& device) {
  if (path == RadiusPath::kFFMA) return env_choice("ETBK_CUDA_FFMA", {"cuda", "triton"}, "cuda") == "triton" &&
                                        triton_registered(device);
  if (env_choice("ETBK_CUDA_TC", {"mma", "triton"}, "triton") == "mma") return false;
  return triton_registered(device);
}

// Operands of the Triton kernels, both K-major (h contiguous) as TF32 wgmma needs: fresh copies
// (never the caller's tensors), rounded to TF32 (nearest, as the mma.sync path) or cast to BF16.
at::Tensor tc_operand(const at::Tensor& x, RadiusPath path, cudaStream_t stream) {
  if (path == RadiusPath::kBF16) return x.to(at::kBFloat16).contiguous();
  at::Tensor y = x.clone(at::MemoryFormat::Contiguous);
  check_cuda(round_to_tf32(y.data_ptr<float>(), y.numel(), stream), "round_to_tf32");
  return y;
}

at::Tensor tc_radius(const at::Tensor& a, const at::Tensor& bt, const at::Tensor& s, const at::Tensor& wcol,
                     bool exact) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("etbkernels::tc_radius", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(a, bt, s, wcol, exact);
}

at::Tensor tc_weight_grad(const at::Tensor& a, const at::Tensor& t, const at::Tensor& s) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("etbkernels::tc_weight_grad", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(a, t, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tc_radius_grad(const at::Tensor& a, const at::Tensor& bt,
                                                              const at::Tensor& s, const at::Tensor& wcol,
                                                              const at::Tensor& wrow, bool both_layouts) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("etbkernels::tc_radius_grad", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, bool)>();
  return op.call(a, bt, s, wcol, wrow, both_layouts);
}

void check_sizes(const char* op, int64_t N, int64_t h, int64_t m, int rows_per_cta) {
  TORCH_CHECK_VALUE(N <= kInt32Max, op, ": the CUDA kernels support at most 2^31 - 1 samples, got N = ", N,
                    " (split the batch)");
  TORCH_CHECK_VALUE(h <= kInt32Max, op, ": the CUDA kernels support at most 2^31 - 1 hidden units, got h = ", h);
  if (rows_per_cta > 0) {  // the forward grid has ceil(m / rows_per_cta) <= 65535 row tiles
    TORCH_CHECK_VALUE((m + rows_per_cta - 1) / rows_per_cta <= 65535, op, ": the CUDA kernels support at most ",
                      65535LL * rows_per_cta, " outputs, got m = ", m);
  }
}

// Active hidden units per sample: idx (N, h) int32 (-1 padded), pos (N, h) int32 or undefined,
// count (N,) int32.
void compact(const at::Tensor& s, at::Tensor& idx, at::Tensor* pos, at::Tensor& count) {
  const int64_t N = s.size(0), h = s.size(1);
  const auto iopts = s.options().dtype(at::kInt);
  idx = at::empty({N, h}, iopts);
  count = at::empty({N}, iopts);
  if (pos) *pos = at::empty({N, h}, iopts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(s.device().index());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "etb_compact_active", [&] {
    check_cuda(compact_active(s.const_data_ptr<scalar_t>(), N, h, idx.data_ptr<int32_t>(),
                              pos ? pos->data_ptr<int32_t>() : nullptr, count.data_ptr<int32_t>(), stream),
               "compact_active");
  });
}

void radius_fwd_cuda(const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s, const at::Tensor& r,
                     at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(w1.device());
  const int64_t N = r.size(0), n = w1.size(1), h = w1.size(0), m = w2.size(0);
  const bool is_double = w1.scalar_type() == at::kDouble;
  const RadiusPath path = is_double ? RadiusPath::kFFMA : float_path();
  check_sizes("etb_block", N, h, m, radius_fwd_rows_per_cta(is_double, path));
  TORCH_CHECK(out.is_contiguous() && out.size(0) == N && out.size(1) == m, "etb_block: internal: bad out buffer");
  if (h == 0 || n == 0) {
    out.zero_();
    return;
  }
  const at::Tensor S = s.contiguous();
  const at::Tensor rc = r.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w1.device().index());
  if (!is_double && use_triton(path, w1.device())) {  // A = W2 (m, h), Bt = W1^T (n, h)
    if (path == RadiusPath::kFFMA) {  // exact fp32: the operands as they are
      out.copy_(tc_radius(w2.contiguous(), w1.t().contiguous(), S, rc, true));
    } else {
      out.copy_(tc_radius(tc_operand(w2, path, stream), tc_operand(w1.t(), path, stream), S, rc, false));
    }
    return;
  }
  at::Tensor idx, count;
  compact(S, idx, nullptr, count);
  // w2t (h, m): rows of active units are contiguous in j. The TF32 kernel reads its operands'
  // bits as TF32, so that path rounds fresh copies of both (never the caller's tensors) once here.
  const bool tf32 = path == RadiusPath::kTF32;
  at::Tensor w2t = tf32 ? w2.t().clone(at::MemoryFormat::Contiguous) : w2.t().contiguous();
  at::Tensor w1k = tf32 ? w1.clone(at::MemoryFormat::Contiguous) : w1;
  if (tf32) {
    check_cuda(round_to_tf32(w1k.data_ptr<float>(), w1k.numel(), stream), "round_to_tf32");
    check_cuda(round_to_tf32(w2t.data_ptr<float>(), w2t.numel(), stream), "round_to_tf32");
  }
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_radius_fwd_cuda", [&] {
    check_cuda(radius_fwd(w1k.const_data_ptr<scalar_t>(), w2t.const_data_ptr<scalar_t>(),
                          idx.const_data_ptr<int32_t>(), count.const_data_ptr<int32_t>(),
                          rc.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, n, h, m, path, stream),
               "radius_fwd");
  });
}

int64_t bwd_budget_bytes() {
  int64_t mb = 512;
  if (const char* env = std::getenv("ETBK_CUDA_BWD_BUDGET_MB")) {
    const long long v = std::atoll(env);
    if (v > 0) mb = v;
  }
  return mb * 1024 * 1024;
}

// The TF32 / BF16 backward on the Triton kernels: per chunk of samples, T = sign(P) G r and dr from
// one tensor-core kernel (P never stored; T is (C, n, m)), then dW1 and dW2^T from a second one
// that contracts T (and its transpose, so both contractions read their K dim contiguously, as TF32
// wgmma needs) with W2^T / W1, each sample's mask a select on the weights. The transpose is a copy
// (measured), or with ETBK_TRITON_T_LAYOUT=dual a second layout the T kernel stores itself (not
// yet measured on a GPU). Extra memory: T twice for one chunk (bounded by the same budget) and the
// per-split partial sums.
void radius_bwd_tc(const at::Tensor& G, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& S,
                   const at::Tensor& R, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2, RadiusPath path,
                   int64_t budget, cudaStream_t stream) {
  const int64_t N = R.size(0), n = w1.size(1), m = w2.size(0);
  const at::Tensor a_t = tc_operand(w1.t(), path, stream), bt_t = tc_operand(w2, path, stream);
  const at::Tensor w2t = tc_operand(w2.t(), RadiusPath::kTF32, stream);  // (h, m)
  const at::Tensor w1r = tc_operand(w1, RadiusPath::kTF32, stream);      // (h, n)
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, budget / (8 * n * m)));
  const bool dual = env_choice("ETBK_TRITON_T_LAYOUT", {"copy", "dual"}, "copy") == "dual";
  at::Tensor dw2t = at::zeros({w1.size(0), m}, w1.options());
  for (int64_t b0 = 0; b0 < N; b0 += chunk) {
    const int64_t C = std::min(chunk, N - b0);
    const at::Tensor s_c = S.narrow(0, b0, C);
    auto dr_t = tc_radius_grad(a_t, bt_t, s_c, G.narrow(0, b0, C), R.narrow(0, b0, C), dual);
    dr.narrow(0, b0, C).copy_(std::get<0>(dr_t));
    const at::Tensor& T = std::get<1>(dr_t);                                       // T[b, k, j]
    dw1.add_(tc_weight_grad(w2t, T, s_c));                                         // sum_j W2^T[i, j] T[b, k, j]
    const at::Tensor Tt = dual ? std::get<2>(dr_t) : T.transpose(1, 2).contiguous();  // T[b, j, k]
    dw2t.add_(tc_weight_grad(w1r, Tt, s_c));                                       // sum_k W1[i, k] T[b, k, j]
  }
  dw2.copy_(dw2t.t());
}

void radius_bwd_cuda(const at::Tensor& grad, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
                     const at::Tensor& r, at::Tensor& dr, at::Tensor& dw1, at::Tensor& dw2) {
  const c10::cuda::CUDAGuard guard(w1.device());
  const int64_t N = r.size(0), n = w1.size(1), h = w1.size(0), m = w2.size(0);
  check_sizes("etb_block_backward", N, h, m, 0);
  const auto opts = w1.options();
  dr.zero_();
  dw1.zero_();
  at::Tensor dw2t = at::zeros({h, m}, opts);  // dW2^T: rows per hidden unit, as the gather-sum writes
  if (N == 0 || h == 0 || n == 0 || m == 0) {
    dw2.copy_(dw2t.t());
    return;
  }
  const at::Tensor S = s.contiguous();
  const RadiusPath path = w1.scalar_type() == at::kDouble ? RadiusPath::kFFMA : float_path();
  if (path != RadiusPath::kFFMA && use_triton(path, w1.device())) {  // exact fp32: the cuBLAS backward
    radius_bwd_tc(grad.contiguous(), w1, w2, S, r.contiguous(), dr, dw1, dw2, path, bwd_budget_bytes(),
                  c10::cuda::getCurrentCUDAStream(w1.device().index()));
    return;
  }
  at::Tensor idx, pos, count;
  compact(S, idx, &pos, count);
  const at::Tensor count_cpu = count.to(at::kCPU);  // one sync: chunk sizes depend on the counts
  const int32_t* cnt = count_cpu.const_data_ptr<int32_t>();
  int64_t hmax_all = 0;
  for (int64_t b = 0; b < N; ++b) hmax_all = std::max<int64_t>(hmax_all, cnt[b]);

  const at::Tensor w2t = w2.t().contiguous();
  const at::Tensor G = grad.contiguous();
  const at::Tensor R = r.contiguous();
  const int64_t elt = static_cast<int64_t>(w1.element_size());
  // Per-sample working set: P and sign(P) (2 m n), gathered W1/W2 rows and the two products
  // U, V (2 hmax (m + n)).
  const int64_t per_sample = elt * (2 * m * n + 2 * std::max<int64_t>(hmax_all, 1) * (m + n));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, bwd_budget_bytes() / per_sample));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w1.device().index());

  for (int64_t b0 = 0; b0 < N; b0 += chunk) {
    const int64_t C = std::min(chunk, N - b0);
    int64_t hmax = 0;
    for (int64_t b = b0; b < b0 + C; ++b) hmax = std::max<int64_t>(hmax, cnt[b]);
    if (hmax == 0) continue;  // no active unit: P = 0, no gradient (dr rows stay 0)
    const at::Tensor idx_c = idx.narrow(0, b0, C).narrow(1, 0, hmax).contiguous();  // (C, hmax), -1 padded
    const at::Tensor pad = idx_c.lt(0).unsqueeze(-1);
    const at::Tensor flat = idx_c.clamp_min(0).reshape({C * hmax});
    // Gathered active rows; padded rows are zeroed with masked_fill (not a multiply: a NaN or
    // inf in the weights must not leak into padding).
    const at::Tensor wa2 = w2t.index_select(0, flat).view({C, hmax, m}).masked_fill_(pad, 0);  // W2^T[act]
    const at::Tensor wa1 = w1.index_select(0, flat).view({C, hmax, n}).masked_fill_(pad, 0);   // W1[act]
    const at::Tensor g_c = G.narrow(0, b0, C);
    const at::Tensor r_c = R.narrow(0, b0, C);
    at::Tensor T;
    {
      at::Tensor P = at::bmm(wa2.transpose(1, 2), wa1);  // (C, m, n)
      T = P.sign();
      P.abs_();
      dr.narrow(0, b0, C).copy_(at::bmm(g_c.unsqueeze(1), P).squeeze(1));  // dr[b,k] = sum_j G |P|
    }
    T.mul_(g_c.unsqueeze(2)).mul_(r_c.unsqueeze(1));  // T = sign(P) * G[j] * r[k]
    const at::Tensor pos_c = pos.narrow(0, b0, C);   // (C, h), rows contiguous
    {
      // dW2[j, i] += sum_b s_b[i] (T_b W1^T)[j, i]  ->  U_b = W1[act] T_b^T, rows per active unit.
      const at::Tensor U = at::bmm(wa1, T.transpose(1, 2)).contiguous();  // (C, hmax, m)
      AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_gather_sum_dw2", [&] {
        check_cuda(gather_sum(U.const_data_ptr<scalar_t>(), pos_c.const_data_ptr<int32_t>(),
                              dw2t.data_ptr<scalar_t>(), C, hmax, h, m, true, stream),
                   "gather_sum");
      });
    }
    {
      // dW1[i, k] += sum_b s_b[i] (W2^T T_b)[i, k]  ->  V_b = W2^T[act] T_b.
      const at::Tensor V = at::bmm(wa2, T).contiguous();  // (C, hmax, n)
      AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "etb_gather_sum_dw1", [&] {
        check_cuda(gather_sum(V.const_data_ptr<scalar_t>(), pos_c.const_data_ptr<int32_t>(),
                              dw1.data_ptr<scalar_t>(), C, hmax, h, n, true, stream),
                   "gather_sum");
      });
    }
  }
  dw2.copy_(dw2t.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> etb_block_cuda(const at::Tensor& center, const at::Tensor& radius,
                                                              const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                              const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                                              const std::optional<at::Tensor>& mask,
                                                              bool output_center) {
  const c10::cuda::CUDAGuard guard(center.device());
  return etb_block_impl(center, radius, w1, b1, w2, b2, mask, output_center, radius_fwd_cuda);
}

Grads6 etb_block_backward_cuda(const at::Tensor& grad_center, const at::Tensor& grad_radius,
                               const at::Tensor& center, const at::Tensor& radius, const at::Tensor& w1,
                               const std::optional<at::Tensor>& b1, const at::Tensor& w2, const at::Tensor& s,
                               bool output_center) {
  const c10::cuda::CUDAGuard guard(center.device());
  TORCH_CHECK_VALUE(s.device() == center.device(), "etb_block_backward: s must be on ", center.device(),
                    " like center, got ", s.device());
  TORCH_CHECK_VALUE(grad_center.device() == center.device() && grad_radius.device() == center.device(),
                    "etb_block_backward: grad_center and grad_radius must be on ", center.device());
  return etb_block_backward_impl(grad_center, grad_radius, center, radius, w1, b1, w2, s, output_center,
                                 radius_bwd_cuda);
}

std::tuple<at::Tensor, at::Tensor> ibp_block_cuda(const at::Tensor& center, const at::Tensor& radius,
                                                  const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                                  const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  const c10::cuda::CUDAGuard guard(center.device());
  return ibp_block_impl(center, radius, w1, b1, w2, b2);
}

Grads6 ibp_block_backward_cuda(const at::Tensor& grad_center, const at::Tensor& grad_radius, const at::Tensor& center,
                               const at::Tensor& radius, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                               const at::Tensor& w2) {
  const c10::cuda::CUDAGuard guard(center.device());
  TORCH_CHECK_VALUE(grad_center.device() == center.device() && grad_radius.device() == center.device(),
                    "ibp_block_backward: grad_center and grad_radius must be on ", center.device());
  return ibp_block_backward_impl(grad_center, grad_radius, center, radius, w1, b1, w2);
}

}  // namespace

TORCH_LIBRARY_IMPL(etbkernels, CUDA, m) {
  m.impl("etb_block", &etb_block_cuda);
  m.impl("etb_block_backward", &etb_block_backward_cuda);
  m.impl("ibp_block", &ibp_block_cuda);
  m.impl("ibp_block_backward", &ibp_block_backward_cuda);
}

}  // namespace etbk::cuda
