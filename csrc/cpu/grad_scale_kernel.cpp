// CPU implementation of bbench::grad_scale_ (see docs/kernels.md).
//
// Work is cut into chunks of at most kChunk elements of one tensor (chunk starts are multiples of
// 256, the noise block). Pass 1 (only for tensors whose group has noise): per chunk a two-pass
// mean / M2 in double while the chunk sits in cache, merged per tensor in chunk order (Chan et al.),
// so sigma does not depend on the thread count. Pass 2: per chunk x <- c*x (+ a*z) with the
// counter-based normals of philox_normal.h. Both passes run over balanced contiguous ranges of
// chunks with at::parallel_for; the inner loops are plain loops that the compiler vectorises
// (with an AVX2 clone chosen at run time where the compiler supports target_clones).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../moments.h"
#include "../noise_seed.h"
#include "../philox_normal.h"
#include "vectorize.h"

namespace bbench {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per chunk (multiple of kNoiseBlock)
static_assert(kChunk % kNoiseBlock == 0, "chunks must hold whole noise blocks");

struct Chunk {
  int64_t tensor;
  int64_t start;
  int64_t len;
};

// ---- vectorisable inner loops (float and double; reduced types go through float) -------------

template <typename T>
BBENCH_INLINE Moments moments_impl(const T* x, int64_t len) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; ++i) s += static_cast<double>(x[i]);
  const double mean = s / static_cast<double>(len);
  double m2 = 0;
#pragma omp simd reduction(+ : m2)
  for (int64_t i = 0; i < len; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    m2 += d * d;
  }
  return Moments{static_cast<double>(len), mean, m2};
}

template <typename T>
BBENCH_INLINE void scale_impl(T* x, int64_t len, T c) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) x[i] = c * x[i];
}

// Noise for the elements [start, start + len) of tensor t; start is a multiple of kNoiseBlock.
template <typename T>
BBENCH_INLINE void scale_noise_impl(T* x, int64_t start, int64_t len, T c, T a, uint64_t seed,
                                    uint64_t t) {
  alignas(64) float z[kNoiseBlock];
  for (int64_t b = 0; b < len; b += kNoiseBlock) {
    const uint64_t c0 = static_cast<uint64_t>((start + b) / kNoiseBlock * kNoiseLanes);
    normals_block(seed, t, c0, z);
    const int64_t n = std::min<int64_t>(kNoiseBlock, len - b);
    T* xb = x + b;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) xb[i] = c * xb[i] + a * static_cast<T>(z[i]);
  }
}

// The clones (target_clones does not apply to templates): one overload per type.
BBENCH_CLONES Moments moments(const float* x, int64_t len) { return moments_impl(x, len); }
BBENCH_CLONES Moments moments(const double* x, int64_t len) { return moments_impl(x, len); }
BBENCH_CLONES void scale(float* x, int64_t len, float c) { scale_impl(x, len, c); }
BBENCH_CLONES void scale(double* x, int64_t len, double c) { scale_impl(x, len, c); }
BBENCH_CLONES void scale_noise(float* x, int64_t start, int64_t len, float c, float a,
                               uint64_t seed, uint64_t t) {
  scale_noise_impl(x, start, len, c, a, seed, t);
}
BBENCH_CLONES void scale_noise(double* x, int64_t start, int64_t len, double c, double a,
                               uint64_t seed, uint64_t t) {
  scale_noise_impl(x, start, len, c, a, seed, t);
}

template <typename T>
constexpr bool kIsFloatOrDouble = std::is_same_v<T, float> || std::is_same_v<T, double>;

// Reduced precision (bfloat16 / float16): a chunk (len <= kChunk) is converted to float in a
// per-thread buffer (allocated once per thread, not per chunk), worked on in float and rounded back.
template <typename T>
float* load_as_float(const T* x, int64_t len) {
  TORCH_INTERNAL_ASSERT_DEBUG_ONLY(len <= kChunk);
  static thread_local std::vector<float> buf(static_cast<size_t>(kChunk));
  float* f = buf.data();
  for (int64_t i = 0; i < len; ++i) f[i] = static_cast<float>(x[i]);
  return f;
}

template <typename T>
Moments chunk_moments(const T* x, int64_t len) {
  if constexpr (kIsFloatOrDouble<T>) {
    return moments(x, len);
  } else {
    return moments(load_as_float(x, len), len);
  }
}

// x <- c*x (+ a*z when `noise`), in float for float / bfloat16 / float16, in double for double.
template <typename T>
void chunk_scale(T* x, int64_t start, int64_t len, double c, bool noise, double a, uint64_t seed,
                 uint64_t t) {
  if constexpr (kIsFloatOrDouble<T>) {
    if (noise) {
      scale_noise(x, start, len, static_cast<T>(c), static_cast<T>(a), seed, t);
    } else {
      scale(x, len, static_cast<T>(c));
    }
  } else {
    float* f = load_as_float(x, len);
    chunk_scale(f, start, len, c, noise, a, seed, t);
    for (int64_t i = 0; i < len; ++i) x[i] = static_cast<T>(f[i]);
  }
}

// Runs fn(chunk_index) over chunks [0, chunks.size()) split into contiguous ranges of about equal
// element counts, one per thread.
template <typename F>
void for_each_chunk_balanced(const std::vector<Chunk>& chunks, const F& fn) {
  const int64_t nc = static_cast<int64_t>(chunks.size());
  if (nc == 0) return;
  std::vector<int64_t> prefix(static_cast<size_t>(nc) + 1, 0);
  for (int64_t i = 0; i < nc; ++i) prefix[i + 1] = prefix[i] + chunks[i].len;
  const int64_t total = prefix[nc];
  const int64_t parts =
      total < 65536 ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nc));
  auto bound = [&](int64_t p) -> int64_t {  // first chunk of part p
    if (p >= parts) return nc;
    const int64_t target = total / parts * p;
    return std::lower_bound(prefix.begin(), prefix.end(), target) - prefix.begin();
  };
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = bound(p), e = bound(p + 1);
      for (int64_t i = b; i < e; ++i) fn(i);
    }
  });
}

// Values of a small 1-D floating tensor as doubles, read in place when it is on the CPU.
std::vector<double> host_doubles(const at::Tensor& t) {
  const at::Tensor h = t.device().is_cpu() ? t : t.to(at::kCPU);
  std::vector<double> out(static_cast<size_t>(h.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "host_doubles", [&] {
    const scalar_t* p = h.const_data_ptr<scalar_t>();
    const int64_t st = h.stride(0);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i * st]);
  });
  return out;
}

void grad_scale_cpu(at::TensorList grads, const at::Tensor& group, const at::Tensor& coeff,
                    const std::optional<at::Tensor>& noise_std, std::optional<int64_t> seed) {
  check_grad_scale_args(grads, group, coeff, noise_std);
  const int64_t nt = static_cast<int64_t>(grads.size());
  if (nt == 0) return;
  TORCH_CHECK(grads[0].device().is_cpu(), "grad_scale_ (CPU kernel): grads are on ",
              grads[0].device());
  const auto g_host = group.device().is_cpu() ? group : group.to(at::kCPU);
  const int64_t* gp = g_host.const_data_ptr<int64_t>();
  const int64_t gs = g_host.stride(0);
  const std::vector<double> cf = host_doubles(coeff);
  const std::vector<double> ns =
      noise_std.has_value() ? host_doubles(*noise_std) : std::vector<double>(cf.size(), 0.0);
  const int64_t G = static_cast<int64_t>(cf.size());
  check_group_range(gp, nt, gs, G);
  std::vector<int64_t> gidx(static_cast<size_t>(nt));
  for (int64_t i = 0; i < nt; ++i) gidx[i] = gp[i * gs];
  bool any_noise = false;
  for (int64_t i = 0; i < nt; ++i) any_noise = any_noise || ns[gidx[i]] != 0.0;
  const uint64_t seed_u = any_noise ? noise_seed(seed) : 0;

  // Work on contiguous storage: non-contiguous tensors go through a contiguous copy.
  std::vector<at::Tensor> work(static_cast<size_t>(nt));
  std::vector<int64_t> active;  // tensors that change
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t gi = gidx[i];
    if (grads[i].numel() == 0 || (ns[gi] == 0.0 && cf[gi] == 1.0)) continue;
    work[i] = grads[i].is_contiguous() ? grads[i] : grads[i].contiguous();
    active.push_back(i);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grads[0].scalar_type(), "grad_scale_cpu", [&] {
    std::vector<Chunk> chunks;
    for (int64_t i : active) {
      const int64_t n = work[i].numel();
      for (int64_t s = 0; s < n; s += kChunk) chunks.push_back({i, s, std::min(kChunk, n - s)});
    }

    // Pass 1: per-tensor sigma (unbiased std + 1e-8) of the tensors that get noise.
    std::vector<double> sigma(static_cast<size_t>(nt), 0.0);
    if (any_noise) {
      std::vector<Chunk> stat_chunks;
      for (const Chunk& ch : chunks) {
        if (ns[gidx[ch.tensor]] != 0.0) stat_chunks.push_back(ch);
      }
      std::vector<Moments> mom(stat_chunks.size());
      for_each_chunk_balanced(stat_chunks, [&](int64_t c) {
        const Chunk& ch = stat_chunks[c];
        const scalar_t* x = work[ch.tensor].const_data_ptr<scalar_t>() + ch.start;
        mom[c] = chunk_moments<scalar_t>(x, ch.len);
      });
      std::vector<Moments> per_tensor(static_cast<size_t>(nt));
      for (size_t c = 0; c < stat_chunks.size(); ++c) {
        auto& m = per_tensor[stat_chunks[c].tensor];
        m = merge(m, mom[c]);
      }
      for (int64_t i : active) sigma[i] = sigma_of(per_tensor[i]);
    }

    // Pass 2: scale (+ noise).
    for_each_chunk_balanced(chunks, [&](int64_t c) {
      const Chunk& ch = chunks[c];
      const int64_t gi = gidx[ch.tensor];
      scalar_t* x = work[ch.tensor].data_ptr<scalar_t>() + ch.start;
      const bool noise = ns[gi] != 0.0;
      chunk_scale<scalar_t>(x, ch.start, ch.len, cf[gi], noise, noise ? ns[gi] * sigma[ch.tensor] : 0.0,
                            seed_u, static_cast<uint64_t>(ch.tensor));
    });
  });

  for (int64_t i : active) {
    if (!work[i].is_same(grads[i])) grads[i].copy_(work[i]);
  }
}

}  // namespace
}  // namespace bbench

TORCH_LIBRARY_IMPL(bbench, CPU, m) {
  m.impl("grad_scale_", &bbench::grad_scale_cpu);
}
