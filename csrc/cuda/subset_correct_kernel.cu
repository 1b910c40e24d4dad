// CUDA implementation of bbench::subset_correct (see docs/kernels.md).
//
// A block handles a tile of samples: thread i of the tile owns the pair (sample, subset) =
// (i >> M, i & (2^M - 1)), so the 2^M subsets of a sample sit in neighbouring lanes and read the
// same contrib row (broadcast loads). Each thread walks the classes once, keeping its subset's
// running argmax in registers; its logit for class k is formed as the reference forms it
// (bias + t_0 + ... + t_{M-1}, left to right, in float32, or float64 for float64 inputs), so the
// predictions are bit-identical to the reference. Gray-code add/subtract updates would save M-1
// adds per class but are not exact in floating point, and on the GPU the loop is bound by loads,
// not adds. Per-block counts live in shared memory (2^M <= 2048) and are flushed with one atomic
// add per subset.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>

#include "../argmax.h"
#include "../checks.h"
#include "cuda_utils.cuh"

namespace bbench {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxSharedCounts = 2048;

template <typename scalar_t>
__global__ void subset_correct_kernel(const scalar_t* __restrict__ contrib,
                                      const scalar_t* __restrict__ absent,
                                      const scalar_t* __restrict__ bias,
                                      const int64_t* __restrict__ labels, int M, int64_t N,
                                      int64_t K, bool* __restrict__ correct,
                                      unsigned long long* __restrict__ counts, bool shared_counts) {
  using acc_t = at::opmath_type<scalar_t>;  // float32, or float64 for float64 inputs
  extern __shared__ unsigned int s_counts[];
  const int64_t S = int64_t{1} << M;
  if (shared_counts) {
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) s_counts[i] = 0;
    __syncthreads();
  }
  const int64_t total = N * S;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx >> M;
    const int64_t s = idx & (S - 1);
    acc_t best = 0;
    int64_t best_k = 0;
    for (int64_t k = 0; k < K; ++k) {
      acc_t v = static_cast<acc_t>(bias[k]);
      for (int m = 0; m < M; ++m) {
        v += ((s >> m) & 1) ? static_cast<acc_t>(contrib[(m * N + n) * K + k])
                            : static_cast<acc_t>(absent[m * K + k]);
      }
      // torch.argmax: the first NaN wins, otherwise the first maximum.
      if (k == 0 || argmax_moves_to(v, best)) {
        best = v;
        best_k = k;
      }
    }
    const bool ok = best_k == labels[n];
    correct[idx] = ok;
    if (ok) {
      if (shared_counts) {
        atomicAdd(&s_counts[s], 1u);
      } else {
        atomicAdd(&counts[s], 1ull);
      }
    }
  }
  if (shared_counts) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
      if (s_counts[i]) atomicAdd(&counts[i], static_cast<unsigned long long>(s_counts[i]));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> subset_correct_cuda(const at::Tensor& contrib,
                                                       const at::Tensor& absent,
                                                       const at::Tensor& bias,
                                                       const at::Tensor& labels) {
  const SubsetDims d = check_subset_correct_args(contrib, absent, bias, labels);
  TORCH_CHECK(contrib.is_cuda(), "subset_correct (CUDA kernel): inputs are on ", contrib.device());
  const c10::cuda::CUDAGuard guard(contrib.device());
  check_labels_in_range(labels, d.K);  // one host read
  auto correct = at::empty({d.N, d.S}, contrib.options().dtype(at::kBool));
  auto counts = at::zeros({d.S}, contrib.options().dtype(at::kLong));
  const int64_t total = d.N * d.S;
  if (total == 0) return {correct, counts};
  const auto c = contrib.contiguous();
  const auto a = absent.contiguous();
  const auto b = bias.contiguous();
  const auto y = labels.contiguous();
  const bool shared_counts = d.S <= kMaxSharedCounts;
  const size_t smem = shared_counts ? static_cast<size_t>(d.S) * sizeof(unsigned int) : 0;
  const int sms = multiprocessor_count();
  const int blocks = static_cast<int>(
      std::min<int64_t>((total + kThreads - 1) / kThreads, static_cast<int64_t>(sms) * 32));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, c.scalar_type(), "subset_correct_cuda", [&] {
    subset_correct_kernel<scalar_t><<<blocks, kThreads, smem, stream>>>(
        c.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        y.const_data_ptr<int64_t>(), static_cast<int>(d.M), d.N, d.K, correct.mutable_data_ptr<bool>(),
        reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>()), shared_counts);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {correct, counts};
}

}  // namespace
}  // namespace bbench

TORCH_LIBRARY_IMPL(bbench, CUDA, m) {
  m.impl("subset_correct", &bbench::subset_correct_cuda);
}
