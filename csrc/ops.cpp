// Op schemas for etbkernels. Kernels live in csrc/cpu (and csrc/cuda); autograd and fake
// (meta) kernels are registered from Python (etbkernels/_ops.py) so the ops work under
// torch.compile and pass torch.library.opcheck.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// The module only has to exist so `import etbkernels._C` loads the library and runs the
// TORCH_LIBRARY registrations below; no Python functions are exported from C++.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(etbkernels, m) {
  // ETB bound of g(x) = W2 relu(W1 x + b1) + b2 over the box center +- radius.
  // Returns (center', radius', s): s is the ReLU mask used (0/1, in the input dtype).
  m.def(
      "etb_block(Tensor center, Tensor radius, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "Tensor? mask, bool output_center) -> (Tensor, Tensor, Tensor)");
  // Gradients of etb_block for (center, radius, w1, b1, w2, b2); recomputes P tiles.
  m.def(
      "etb_block_backward(Tensor grad_center, Tensor grad_radius, Tensor center, Tensor radius, "
      "Tensor w1, Tensor? b1, Tensor w2, Tensor s, bool output_center) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // IBP bound of the same block: returns (center', radius').
  m.def(
      "ibp_block(Tensor center, Tensor radius, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2) "
      "-> (Tensor, Tensor)");
  m.def(
      "ibp_block_backward(Tensor grad_center, Tensor grad_radius, Tensor center, Tensor radius, "
      "Tensor w1, Tensor? b1, Tensor w2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Tensor-core helpers of the CUDA kernels above, implemented in Triton (etbkernels/triton_radius.py,
  // registered for CUDA from Python when Triton is installed). For each sample b, with
  // P = a diag(s_b) bt^T: out[b, row] = sum_col |P[row, col]| wcol[b, col]; the _grad form also
  // returns T[b, row, col] = sign(P[row, col]) wcol[b, col] wrow[b, row], and with both_layouts the
  // same T as (N, cols, rows) (else an empty tensor). exact: fp32 FMA products instead of TF32.
  m.def("tc_radius(Tensor a, Tensor bt, Tensor s, Tensor wcol, bool exact=False) -> Tensor");
  m.def(
      "tc_radius_grad(Tensor a, Tensor bt, Tensor s, Tensor wcol, Tensor wrow, bool both_layouts=False) "
      "-> (Tensor, Tensor, Tensor)");
  // out[i, x] = sum_b [s[b, i] != 0] sum_t a[i, t] t[b, x, t]: (h, xdim) for t (C, xdim, tdim).
  m.def("tc_weight_grad(Tensor a, Tensor t, Tensor s) -> Tensor");
}
