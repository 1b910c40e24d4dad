// CUDA implementation of bbench::grad_scale_ (see docs/kernels.md).
//
// One multi-tensor launch over the whole list: the tensors are cut into chunks of kChunk
// elements (a block per chunk, grid-stride); pointers, sizes and the chunk table travel in one
// pinned host buffer copied asynchronously. Group indices, coefficients and noise scales are read
// by the kernels from device tensors, so nothing waits on the GPU. With noise two small launches
// come first: per-chunk mean / M2 (two passes over the chunk in double, the second from cache),
// then one warp per tensor merging its chunks in a fixed order into sigma. The noise is the
// counter-based Philox of philox_normal.h, so a seed gives the same numbers whatever the launch
// geometry (and the same normals as the CPU kernel up to float rounding of the polynomials).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../moments.h"
#include "../noise_seed.h"
#include "../philox_normal.h"
#include "cuda_utils.cuh"

namespace bbench {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per block-chunk (multiple of kNoiseBlock)
constexpr int kThreads = 256;
static_assert(kChunk % kNoiseBlock == 0, "chunks must hold whole noise blocks");

// Device view of the host-built table (all int64):
//   ptr[T], numel[T], first_chunk[T + 1], chunk_tensor[C], chunk_start[C]
struct Table {
  const int64_t* ptr;
  const int64_t* numel;
  const int64_t* first_chunk;
  const int64_t* chunk_tensor;
  const int64_t* chunk_start;
};

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Deterministic block sum; the result is valid in every thread.
__device__ double block_sum(double v, double* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  double t = 0;
  if (warp == 0) {
    t = lane < nw ? smem[lane] : 0.0;
    t = warp_sum(t);
    if (lane == 0) smem[32] = t;
  }
  __syncthreads();
  return smem[32];
}

template <typename scalar_t>
__global__ void chunk_moments_kernel(Table tab, int64_t n_chunks, const int64_t* __restrict__ group,
                                     int64_t n_groups, const double* __restrict__ noise,
                                     double* __restrict__ out) {
  __shared__ double smem[33];
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const int64_t t = tab.chunk_tensor[c];
    const int64_t g = group[t];
    CUDA_KERNEL_ASSERT(g >= 0 && g < n_groups);
    if (noise[g] == 0.0) continue;  // block-uniform: sigma not needed
    const int64_t start = tab.chunk_start[c];
    const int64_t len = min(kChunk, tab.numel[t] - start);
    const scalar_t* x = reinterpret_cast<const scalar_t*>(tab.ptr[t]) + start;
    double s = 0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) s += static_cast<double>(x[i]);
    const double mean = block_sum(s, smem) / static_cast<double>(len);
    double m2 = 0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      const double d = static_cast<double>(x[i]) - mean;
      m2 += d * d;
    }
    m2 = block_sum(m2, smem);
    if (threadIdx.x == 0) {
      out[3 * c] = static_cast<double>(len);
      out[3 * c + 1] = mean;
      out[3 * c + 2] = m2;
    }
  }
}

// One warp per tensor: lane l merges chunks l, l+32, ... in order, then a fixed butterfly.
__global__ void finalize_sigma_kernel(Table tab, int64_t n_tensors, const int64_t* __restrict__ group,
                                      int64_t n_groups, const double* __restrict__ noise,
                                      const double* __restrict__ mom, double* __restrict__ sigma) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (t >= n_tensors) return;  // warp-uniform
  const int64_t g = group[t];
  CUDA_KERNEL_ASSERT(g >= 0 && g < n_groups);
  if (noise[g] == 0.0) return;
  Moments acc;
  for (int64_t c = tab.first_chunk[t] + lane; c < tab.first_chunk[t + 1]; c += 32) {
    acc = merge(acc, Moments{mom[3 * c], mom[3 * c + 1], mom[3 * c + 2]});
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Moments other{__shfl_down_sync(0xffffffffu, acc.n, o), __shfl_down_sync(0xffffffffu, acc.mean, o),
                  __shfl_down_sync(0xffffffffu, acc.m2, o)};
    acc = merge(acc, other);
  }
  if (lane == 0) sigma[t] = sigma_of(acc);
}

template <typename scalar_t, bool kNoise>
__global__ void scale_kernel(Table tab, int64_t n_chunks, const int64_t* __restrict__ group,
                             int64_t n_groups, const double* __restrict__ coeff,
                             const double* __restrict__ noise, const double* __restrict__ sigma,
                             uint64_t seed) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const int64_t t = tab.chunk_tensor[c];
    const int64_t g = group[t];
    CUDA_KERNEL_ASSERT(g >= 0 && g < n_groups);
    const opmath_t cf = static_cast<opmath_t>(coeff[g]);
    const double ns = kNoise ? noise[g] : 0.0;
    const int64_t start = tab.chunk_start[c];
    const int64_t len = min(kChunk, tab.numel[t] - start);
    scalar_t* x = reinterpret_cast<scalar_t*>(tab.ptr[t]) + start;
    if (ns == 0.0) {
      if (coeff[g] == 1.0) continue;  // block-uniform
      for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        x[i] = static_cast<scalar_t>(cf * static_cast<opmath_t>(x[i]));
      }
      continue;
    }
    const opmath_t a = static_cast<opmath_t>(ns * sigma[t]);
    // Counter q of this chunk feeds elements 256*(q/64) + 64*L + q%64, L = 0..3 (coalesced in q).
    const int64_t n_ctr = (len + kNoiseBlock - 1) / kNoiseBlock * kNoiseLanes;
    const uint64_t ctr0 = static_cast<uint64_t>(start / kNoiseBlock * kNoiseLanes);
    for (int64_t q = threadIdx.x; q < n_ctr; q += blockDim.x) {
      float z[4];
      normals_of_counter(seed, static_cast<uint64_t>(t), ctr0 + static_cast<uint64_t>(q), z[0], z[1],
                         z[2], z[3]);
      const int64_t base = (q / kNoiseLanes) * kNoiseBlock + (q % kNoiseLanes);
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t i = base + l * kNoiseLanes;
        if (i < len) {
          x[i] = static_cast<scalar_t>(cf * static_cast<opmath_t>(x[i]) + a * static_cast<opmath_t>(z[l]));
        }
      }
    }
  }
}

at::Tensor to_device_double(const at::Tensor& t, const at::Device& dev) {
  return t.to(dev, at::kDouble, /*non_blocking=*/true).contiguous();
}

void grad_scale_cuda(at::TensorList grads, const at::Tensor& group, const at::Tensor& coeff,
                     const std::optional<at::Tensor>& noise_std, std::optional<int64_t> seed) {
  check_grad_scale_args(grads, group, coeff, noise_std);
  const int64_t nt = static_cast<int64_t>(grads.size());
  if (nt == 0) return;
  const at::Device dev = grads[0].device();
  TORCH_CHECK(dev.is_cuda(), "grad_scale_ (CUDA kernel): grads are on ", dev,
              "; group / coeff / noise_std may be on the CPU or on the grads' device");
  for (const auto* t : {&group, &coeff}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() || t->device() == dev, "grad_scale_: expected a tensor on ",
                      dev, " or the CPU, got one on ", t->device());
  }
  if (group.device().is_cpu()) {
    check_group_range(group.const_data_ptr<int64_t>(), nt, group.stride(0), coeff.size(0));
  }  // else: the kernel asserts (reading it here would synchronise)
  const c10::cuda::CUDAGuard guard(dev);
  const bool with_noise = noise_std.has_value();
  const int64_t G = coeff.size(0);
  const auto group_d = group.to(dev, at::kLong, /*non_blocking=*/true).contiguous();
  const auto coeff_d = to_device_double(coeff, dev);
  const auto noise_d = with_noise ? to_device_double(*noise_std, dev) : coeff_d;
  const uint64_t seed_u = with_noise ? noise_seed(seed) : 0;

  // Contiguous work tensors (a non-contiguous grad goes through a copy and is written back).
  std::vector<at::Tensor> work(static_cast<size_t>(nt));
  for (int64_t i = 0; i < nt; ++i) {
    work[i] = grads[i].is_contiguous() ? grads[i] : grads[i].contiguous();
  }
  // Host table in pinned memory, one asynchronous copy.
  std::vector<int64_t> first(static_cast<size_t>(nt) + 1, 0);
  for (int64_t i = 0; i < nt; ++i) first[i + 1] = first[i] + (work[i].numel() + kChunk - 1) / kChunk;
  const int64_t nc = first[nt];
  if (nc == 0) return;
  auto host = at::empty({4 * nt + 1 + 2 * nc},
                        at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  int64_t* h_ptr = h;
  int64_t* h_numel = h + nt;
  int64_t* h_first = h + 2 * nt;
  int64_t* h_ctensor = h + 3 * nt + 1;
  int64_t* h_cstart = h_ctensor + nc;
  for (int64_t i = 0; i < nt; ++i) {
    h_ptr[i] = reinterpret_cast<int64_t>(work[i].data_ptr());
    h_numel[i] = work[i].numel();
    h_first[i] = first[i];
    for (int64_t c = first[i]; c < first[i + 1]; ++c) {
      h_ctensor[c] = i;
      h_cstart[c] = (c - first[i]) * kChunk;
    }
  }
  h_first[nt] = nc;
  const auto dtab = host.to(dev, /*non_blocking=*/true);
  const int64_t* d = dtab.const_data_ptr<int64_t>();
  const Table tab{d, d + nt, d + 2 * nt, d + 3 * nt + 1, d + 3 * nt + 1 + nc};

  auto stream = c10::cuda::getCurrentCUDAStream();
  const int sms = multiprocessor_count();
  const int blocks = static_cast<int>(std::min<int64_t>(nc, static_cast<int64_t>(sms) * 16));
  at::Tensor sigma;
  if (with_noise) {
    auto mom = at::empty({3 * nc}, coeff_d.options());
    sigma = at::empty({nt}, coeff_d.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, work[0].scalar_type(), "grad_scale_moments", [&] {
      chunk_moments_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          tab, nc, group_d.const_data_ptr<int64_t>(), G, noise_d.const_data_ptr<double>(),
          mom.mutable_data_ptr<double>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int warps_per_block = 4;
    const int fblocks = static_cast<int>((nt + warps_per_block - 1) / warps_per_block);
    finalize_sigma_kernel<<<fblocks, 32 * warps_per_block, 0, stream>>>(
        tab, nt, group_d.const_data_ptr<int64_t>(), G, noise_d.const_data_ptr<double>(),
        mom.const_data_ptr<double>(), sigma.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, work[0].scalar_type(), "grad_scale_cuda", [&] {
    if (with_noise) {
      scale_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          tab, nc, group_d.const_data_ptr<int64_t>(), G, coeff_d.const_data_ptr<double>(),
          noise_d.const_data_ptr<double>(), sigma.const_data_ptr<double>(), seed_u);
    } else {
      scale_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          tab, nc, group_d.const_data_ptr<int64_t>(), G, coeff_d.const_data_ptr<double>(), nullptr,
          nullptr, 0);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t i = 0; i < nt; ++i) {
    if (!work[i].is_same(grads[i])) grads[i].copy_(work[i]);
  }
}

}  // namespace
}  // namespace bbench

TORCH_LIBRARY_IMPL(bbench, CUDA, m) {
  m.impl("grad_scale_", &bbench::grad_scale_cuda);
}
