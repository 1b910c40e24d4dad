// BBENCH_HD: a small function compiled for host and device by nvcc, always inlined elsewhere.
// For the helpers shared by the CPU and CUDA kernels (philox_normal.h, moments.h, argmax.h).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BBENCH_HD __host__ __device__ __forceinline__
#else
#define BBENCH_HD inline __attribute__((always_inline))
#endif
