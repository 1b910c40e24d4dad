// Counter-based Gaussian noise shared by the CPU and CUDA `grad_scale_` kernels.
//
// The noise of element e of tensor t (e = row-major index into the tensor, t = position of the
// tensor in the list) is a pure function of (seed, t, e): independent of chunking, of the number of
// threads and of the device. Elements are grouped in blocks of 256; element
//     e = 256 * B + 64 * L + j        (L in 0..3, j in 0..63)
// takes normal number L of Philox counter c = 64 * B + j, where
//     Philox4x32-10(counter = (lo32(c), hi32(c), lo32(t), hi32(t)), key = (lo32(seed), hi32(seed)))
// gives four 32-bit words; words (0, 1) and (2, 3) become normals (0, 1) and (2, 3) by Box-Muller
// with 24-bit uniforms u1 in (0, 1] and u2 in [0, 1), computed in float32 with the branch-free
// polynomial log / sin / cos below (so that the CPU loops vectorise; error of a normal < 1e-6).
// With this layout one counter feeds 4 elements 64 apart: contiguous stores on the CPU, coalesced
// accesses on the GPU. Normals are truncated at sqrt(-2 ln 2^-24) = 5.77 (probability 8e-9).
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace bbench {

struct U32x4 {
  uint32_t x, y, z, w;
};

BBENCH_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32 (Salmon et al. 2011), same constants as Random123 / curand: round multipliers and
// key increments (Weyl sequence).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// One round with round key (k0, k1).
BBENCH_HD U32x4 philox_round(U32x4 c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(kPhiloxM0, c.x, hi0, lo0);
  mulhilo32(kPhiloxM1, c.z, hi1, lo1);
  return U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// Philox4x32-10: ten rounds, the key advancing by (W0, W1) after each.
BBENCH_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#elif defined(__clang__)
#pragma clang loop unroll(full)
#elif defined(__GNUC__)
#pragma GCC unroll 10
#endif
  for (int r = 0; r < 10; ++r) {
    c = philox_round(c, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c;
}

BBENCH_HD float bits_as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

BBENCH_HD uint32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// Natural log for x in (0, 1] (Cephes logf polynomial; branch-free so that it vectorises).
BBENCH_HD float log_unit(float x) {
  // musl's reduction: x = 2^e * m with m in [sqrt(1/2), sqrt(2)), integer ops only.
  uint32_t bits = float_as_bits(x) + (0x3F800000u - 0x3F3504F3u);
  const int e = static_cast<int>(bits >> 23) - 127;
  const float m = bits_as_float((bits & 0x007FFFFFu) + 0x3F3504F3u);
  const float f = m - 1.0f;  // [-0.29, 0.41]
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float y = f * z * p;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return f + y + 0.693359375f * fe;
}

// sin and cos of 2*pi*u for u in [0, 1): quadrant from u, Taylor polynomials on [0, pi/2).
BBENCH_HD void sincos_2pi(float u, float& s, float& c) {
  const float q = u * 4.0f;
  const int j = static_cast<int>(q) & 3;  // 0..3 (q < 4 for u < 1)
  const float x = (q - static_cast<float>(j)) * 1.57079632679489662f;
  const float x2 = x * x;
  float sp = -2.5052108e-8f;  // -1/11!
  sp = sp * x2 + 2.7557319e-6f;
  sp = sp * x2 - 1.9841270e-4f;
  sp = sp * x2 + 8.3333333e-3f;
  sp = sp * x2 - 1.6666667e-1f;
  const float sx = x + x * x2 * sp;
  float cp = 2.0876757e-9f;  // 1/12!
  cp = cp * x2 - 2.7557319e-7f;
  cp = cp * x2 + 2.4801587e-5f;
  cp = cp * x2 - 1.3888889e-3f;
  cp = cp * x2 + 4.1666667e-2f;
  cp = cp * x2 - 0.5f;
  const float cx = 1.0f + x2 * cp;
  // (sin, cos)(x + j*pi/2): j=0 (s, c), 1 (c, -s), 2 (-s, -c), 3 (-c, s). Integer sign masks
  // instead of branches, so that the CPU loop vectorises.
  const uint32_t odd = 0u - static_cast<uint32_t>(j & 1);  // all ones for odd j
  const uint32_t sxb = float_as_bits(sx), cxb = float_as_bits(cx);
  const float a = bits_as_float((cxb & odd) | (sxb & ~odd));
  const float b = bits_as_float((sxb & odd) | (cxb & ~odd));
  const uint32_t sign_s = static_cast<uint32_t>(j >> 1) << 31;                // j = 2, 3
  const uint32_t sign_c = static_cast<uint32_t>(((j + 1) >> 1) & 1) << 31;    // j = 1, 2
  s = bits_as_float(float_as_bits(a) ^ sign_s);
  c = bits_as_float(float_as_bits(b) ^ sign_c);
}

// Two standard normals from two 32-bit words.
BBENCH_HD void box_muller(uint32_t a, uint32_t b, float& z0, float& z1) {
  constexpr float kInv24 = 1.0f / 16777216.0f;
  // (signed conversions: exact below 2^24, and they vectorise where unsigned ones do not)
  const float u1 = static_cast<float>(static_cast<int32_t>((a >> 8) + 1u)) * kInv24;  // (0, 1]
  const float u2 = static_cast<float>(static_cast<int32_t>(b >> 8)) * kInv24;         // [0, 1)
  const float r2 = -2.0f * log_unit(u1);
#if defined(__CUDA_ARCH__)
  const float r = sqrtf(r2);
#else
  const float r = __builtin_sqrtf(r2);
#endif
  float s, c;
  sincos_2pi(u2, s, c);
  z0 = r * c;
  z1 = r * s;
}

constexpr int64_t kNoiseBlock = 256;  // elements per block of the layout above
constexpr int64_t kNoiseLanes = 64;   // counters per block

// The four normals of Philox counter `c` of tensor `t`: they belong to the elements
// 256 * (c / 64) + 64 * L + (c % 64), L = 0..3.
BBENCH_HD void normals_of_counter(uint64_t seed, uint64_t t, uint64_t c, float& z0, float& z1,
                                  float& z2, float& z3) {
  const U32x4 ctr{static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32),
                  static_cast<uint32_t>(t), static_cast<uint32_t>(t >> 32)};
  const U32x4 r = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(r.x, r.y, z0, z1);
  box_muller(r.z, r.w, z2, z3);
}

#if !defined(__CUDACC__)
// CPU: the 256 normals of one noise block (counters c0 .. c0 + 63, c0 a multiple of 64), the
// same numbers as normals_of_counter, written as loops over the 64 lanes so they vectorise.
// z[64 * L + j] = normal L of counter c0 + j.
BBENCH_HD void normals_block(uint64_t seed, uint64_t t, uint64_t c0, float* __restrict z) {
  alignas(64) uint32_t x[kNoiseLanes], y[kNoiseLanes], u[kNoiseLanes], w[kNoiseLanes];
  const uint32_t c_hi = static_cast<uint32_t>(c0 >> 32);
  const uint32_t c_lo = static_cast<uint32_t>(c0);  // c0 % 64 == 0: adding j < 64 never carries
#pragma omp simd
  for (int j = 0; j < kNoiseLanes; ++j) {
    x[j] = c_lo + static_cast<uint32_t>(j);
    y[j] = c_hi;
    u[j] = static_cast<uint32_t>(t);
    w[j] = static_cast<uint32_t>(t >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {  // philox4x32_10, one round at a time over the 64 lanes
#pragma omp simd
    for (int j = 0; j < kNoiseLanes; ++j) {
      const U32x4 v = philox_round(U32x4{x[j], y[j], u[j], w[j]}, k0, k1);
      x[j] = v.x;
      y[j] = v.y;
      u[j] = v.z;
      w[j] = v.w;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
#pragma omp simd
  for (int j = 0; j < kNoiseLanes; ++j) {
    box_muller(x[j], y[j], z[j], z[j + 64]);
    box_muller(u[j], w[j], z[j + 128], z[j + 192]);
  }
}
#endif

}  // namespace bbench
