// What ops.cpp and dist.cpp share: tch's tensor pointers (`C_tensor`, an `at::Tensor*`) as a
// list of tensors.
#pragma once
#include <ATen/core/Tensor.h>
#include <cstddef>
#include <vector>

namespace tb {
inline std::vector<at::Tensor> list(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}
}  // namespace tb
