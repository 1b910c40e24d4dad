// Count / mean / M2 of a set of values, merged in a fixed order (Chan et al.), and the sigma that
// grad_scale_ derives from them; shared by the CPU and CUDA kernels (see docs/kernels.md).
#pragma once

#include <cmath>

#include "host_device.h"

namespace bbench {

struct Moments {
  double n = 0, mean = 0, m2 = 0;
};

BBENCH_HD Moments merge(const Moments& a, const Moments& b) {
  if (a.n == 0) return b;
  if (b.n == 0) return a;
  const double n = a.n + b.n;
  const double d = b.mean - a.mean;
  return Moments{n, a.mean + d * (b.n / n), a.m2 + b.m2 + d * d * (a.n * b.n / n)};
}

// Unbiased standard deviation + 1e-8 (1e-8 for fewer than two values).
BBENCH_HD double sigma_of(const Moments& m) {
  return (m.n > 1 ? sqrt(m.m2 / (m.n - 1)) : 0.0) + 1e-8;
}

}  // namespace bbench
