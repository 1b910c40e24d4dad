// CPU implementation of bbench::subset_correct (see docs/kernels.md).
//
// Parallel over samples. For one sample the 2^M logit vectors are the leaves of a binary tree
// whose level j adds modality j's term (contrib if present, absent otherwise) to its parent:
//     P_0 = bias,  P_{j+1} = P_j + term_j(s),  logits(s) = P_M.
// Walking the leaves in bit-reversed order keeps the M-1 inner prefixes on a stack and
// recomputes only those that change, so a subset costs about two vector adds of length K
// (2^M - 2 inner nodes + 2^M leaves) instead of M. Every leaf is the same left-to-right sum
// (bias + term_0 + ... + term_{M-1}) in the accumulation type as the reference computes, hence
// bit-identical logits and identical argmax (a Gray-code walk with add/subtract updates would
// not be: (x - a) + b is not x + b - a in floating point). The leaf is never stored: the argmax
// test reads it as it is formed, comparing the label's logit with the maxima before and after it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <vector>

#include "../argmax.h"
#include "../checks.h"
#include "vectorize.h"

namespace bbench {
namespace {

constexpr int64_t kSmallK = 24;  // below: scalar argmax scan

// argmax_k(p[k] + t[k]) == label, with torch.argmax's rules: the first NaN wins, otherwise the
// first maximum. The value at the label is formed by the same single add as the others.
template <typename T>
BBENCH_INLINE bool leaf_is_correct(const T* __restrict p, const T* __restrict t, int64_t K,
                                   int64_t label) {
  const T lab = p[label] + t[label];
  T mlo = -std::numeric_limits<T>::infinity();
  int nan_lo = 0;
#pragma omp simd reduction(max : mlo) reduction(| : nan_lo)
  for (int64_t k = 0; k < label; ++k) {
    const T v = p[k] + t[k];
    mlo = v > mlo ? v : mlo;
    nan_lo |= (v != v);
  }
  if (nan_lo) return false;   // a NaN before the label is the argmax
  if (lab != lab) return true;  // the label holds the first NaN
  T mhi = -std::numeric_limits<T>::infinity();
  int nan_hi = 0;
#pragma omp simd reduction(max : mhi) reduction(| : nan_hi)
  for (int64_t k = label + 1; k < K; ++k) {
    const T v = p[k] + t[k];
    mhi = v > mhi ? v : mhi;
    nan_hi |= (v != v);
  }
  if (nan_hi) return false;
  return (label == 0 || lab > mlo) && lab >= mhi;
}

// Same test for few classes: one scalar pass tracking the argmax (the vector reductions of
// leaf_is_correct cost more than they save below a few dozen classes).
template <typename T>
BBENCH_INLINE bool leaf_is_correct_small(const T* __restrict p, const T* __restrict t, int64_t K,
                                         int64_t label) {
  T best = p[0] + t[0];
  int64_t arg = 0;
  for (int64_t k = 1; k < K; ++k) {
    const T v = p[k] + t[k];
    if (argmax_moves_to(v, best)) {
      best = v;
      arg = k;
    }
  }
  return arg == label;
}

template <typename T>
BBENCH_INLINE void add_rows(T* __restrict out, const T* __restrict a, const T* __restrict b,
                            int64_t K) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) out[k] = a[k] + b[k];
}

// Samples [n0, n1), M >= 1. `prefix` has room for M * K values; local_counts has 2^M entries.
template <typename T>
BBENCH_INLINE void subset_rows_impl(const T* contrib, const T* absent, const T* bias,
                                    const int64_t* labels, int64_t M, int64_t N, int64_t K,
                                    int64_t n0, int64_t n1, bool* correct, int64_t* local_counts,
                                    T* prefix) {
  const int64_t S = int64_t{1} << M;
  // prefix row j (j = 0..M-1) holds P_j; row 0 is the bias and never changes.
  std::copy(bias, bias + K, prefix);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t label = labels[n];
    bool* out = correct + n * S;
    auto term = [&](int64_t m, int64_t s) -> const T* {
      return ((s >> m) & 1) ? contrib + (m * N + n) * K : absent + m * K;
    };
    int64_t s = 0;  // subset of leaf r: bit m of s = bit (M-1-m) of r
    for (int64_t r = 0; r < S; ++r) {
      int64_t from;  // first prefix row to recompute
      if (r == 0) {
        from = 1;
      } else {
        const int64_t tz = __builtin_ctzll(static_cast<unsigned long long>(r));
        // bits 0..tz of r flipped: modalities M-1-tz .. M-1 of s flip
        for (int64_t b = 0; b <= tz; ++b) s ^= int64_t{1} << (M - 1 - b);
        from = M - tz;
      }
      for (int64_t j = from; j < M; ++j) {
        add_rows(prefix + j * K, prefix + (j - 1) * K, term(j - 1, s), K);
      }
      const bool ok = K < kSmallK ? leaf_is_correct_small(prefix + (M - 1) * K, term(M - 1, s), K, label)
                                  : leaf_is_correct(prefix + (M - 1) * K, term(M - 1, s), K, label);
      out[s] = ok;
      local_counts[s] += ok;
    }
  }
}

// The clones (target_clones does not apply to templates): one overload per type.
BBENCH_CLONES void subset_rows(const float* contrib, const float* absent, const float* bias,
                               const int64_t* labels, int64_t M, int64_t N, int64_t K, int64_t n0,
                               int64_t n1, bool* correct, int64_t* counts, float* prefix) {
  subset_rows_impl(contrib, absent, bias, labels, M, N, K, n0, n1, correct, counts, prefix);
}

BBENCH_CLONES void subset_rows(const double* contrib, const double* absent, const double* bias,
                               const int64_t* labels, int64_t M, int64_t N, int64_t K, int64_t n0,
                               int64_t n1, bool* correct, int64_t* counts, double* prefix) {
  subset_rows_impl(contrib, absent, bias, labels, M, N, K, n0, n1, correct, counts, prefix);
}

// torch.argmax(v) of a single vector.
template <typename T>
int64_t argmax_of(const T* v, int64_t K) {
  int64_t best = 0;
  for (int64_t k = 1; k < K; ++k) {
    if (argmax_moves_to(v[k], v[best])) best = k;
  }
  return best;
}

template <typename T>
void subset_correct_typed(const at::Tensor& contrib, const at::Tensor& absent,
                          const at::Tensor& bias, const at::Tensor& labels, const SubsetDims& d,
                          at::Tensor& correct, at::Tensor& counts) {
  const int64_t M = d.M, N = d.N, K = d.K, S = d.S;
  const T* c = contrib.const_data_ptr<T>();
  const T* a = absent.const_data_ptr<T>();
  const T* b = bias.const_data_ptr<T>();
  const int64_t* y = labels.const_data_ptr<int64_t>();
  bool* out = correct.data_ptr<bool>();
  int64_t* cnt = counts.data_ptr<int64_t>();
  if (M == 0) {  // one subset, the empty one: every sample's logits are the bias
    const int64_t pred = argmax_of(b, K);
    for (int64_t n = 0; n < N; ++n) {
      out[n] = y[n] == pred;
      cnt[0] += out[n];
    }
    return;
  }
  std::mutex mu;
  const int64_t work_per_sample = std::max<int64_t>(1, 3 * S * K);
  const int64_t grain = std::max<int64_t>(1, 65536 / work_per_sample);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    std::vector<int64_t> local(static_cast<size_t>(S), 0);
    std::vector<T> prefix(static_cast<size_t>(M * K));
    subset_rows(c, a, b, y, M, N, K, n0, n1, out, local.data(), prefix.data());
    std::lock_guard<std::mutex> lock(mu);
    for (int64_t s = 0; s < S; ++s) cnt[s] += local[s];
  });
}

std::tuple<at::Tensor, at::Tensor> subset_correct_cpu(const at::Tensor& contrib,
                                                      const at::Tensor& absent,
                                                      const at::Tensor& bias,
                                                      const at::Tensor& labels) {
  const SubsetDims d = check_subset_correct_args(contrib, absent, bias, labels);
  TORCH_CHECK(contrib.device().is_cpu(), "subset_correct (CPU kernel): inputs are on ",
              contrib.device());
  check_labels_in_range(labels, d.K);
  auto correct = at::empty({d.N, d.S}, contrib.options().dtype(at::kBool));
  auto counts = at::zeros({d.S}, contrib.options().dtype(at::kLong));
  // Accumulation type: double for float64, float32 otherwise (bfloat16 / float16 are widened
  // exactly to float32 first, as the reference does).
  const bool dbl = contrib.scalar_type() == at::kDouble;
  const auto acc = dbl ? at::kDouble : at::kFloat;
  const auto c = contrib.to(acc).contiguous();
  const auto a = absent.to(acc).contiguous();
  const auto b = bias.to(acc).contiguous();
  const auto y = labels.contiguous();
  if (dbl) {
    subset_correct_typed<double>(c, a, b, y, d, correct, counts);
  } else {
    subset_correct_typed<float>(c, a, b, y, d, correct, counts);
  }
  return {correct, counts};
}

}  // namespace
}  // namespace bbench

TORCH_LIBRARY_IMPL(bbench, CPU, m) {
  m.impl("subset_correct", &bbench::subset_correct_cpu);
}
