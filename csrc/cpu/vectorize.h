// Helpers for the CPU kernels: the inner loops are plain loops with `omp simd` hints (the
// extension is compiled with -fopenmp, which at::parallel_for needs anyway). Where GCC or Clang
// supports function multi-versioning on x86-64 Linux, the hot functions are also compiled for
// AVX2 (and AVX-512) and the best clone is picked at load time; elsewhere the baseline build runs.
#pragma once

#define BBENCH_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__linux__) && !defined(BBENCH_NO_CLONES) && \
    (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
#define BBENCH_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define BBENCH_CLONES
#endif
