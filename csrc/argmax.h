// torch.argmax's tie and NaN rules, shared by the CPU and CUDA subset_correct kernels.
#pragma once

#include "host_device.h"

namespace bbench {

// Whether a scan for the argmax moves from `best` (the value at the current argmax) to the later
// value `v`: the first NaN wins, otherwise the first maximum (so -0.0 and +0.0 tie).
template <typename T>
BBENCH_HD bool argmax_moves_to(T v, T best) {
  return !(best != best) && ((v != v) || v > best);
}

}  // namespace bbench
