// The Philox key of one grad_scale_ call, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>
#include <mutex>
#include <optional>

namespace bbench {

// The caller's seed, or else one draw from torch's default CPU generator: torch.manual_seed
// then makes the noise reproducible, on either device, without a seed argument.
inline uint64_t noise_seed(const std::optional<int64_t>& seed) {
  if (seed.has_value()) return static_cast<uint64_t>(*seed);
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

}  // namespace bbench
