// Small helpers for the CUDA kernels. Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull
// in cuBLAS / cuSPARSE / cuSOLVER headers, which a bare CUDA toolkit (nvcc only) lacks.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

namespace bbench {

// Streaming multiprocessors of the current device (queried once per device).
inline int multiprocessor_count() {
  static int cache[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev >= 0 && dev < 64 && cache[dev] > 0) return cache[dev];
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < 64) cache[dev] = sms;
  return sms;
}

}  // namespace bbench
