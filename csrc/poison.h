// Test hook: with ETBK_POISON=1 in the environment, every buffer a kernel allocates with
// at::empty is filled with NaN first, so a kernel that forgets to write an element (or reads
// a stale one) fails the tests instead of passing on lucky memory contents.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace etbk {

inline bool poison_enabled() {
  const char* v = std::getenv("ETBK_POISON");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// at::empty, filled with NaN when poisoning is on.
inline at::Tensor empty_poisoned(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (poison_enabled()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace etbk
