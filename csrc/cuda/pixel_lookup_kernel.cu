// CUDA implementation of bbench::pixel_lookup (see docs/kernels.md).
//
// One thread per output element, in the output's (contiguous) order, so the float32 stores
// coalesce; each reads its uint8 through the input's strides (a channels-last batch is then
// read three bytes apart, which the L1/L2 caches absorb) and its value from the [C, 256] table
// (1 KiB per channel, cache-resident). Bound by the 4-byte stores: one pass over the output
// instead of the reference's four.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "cuda_utils.cuh"

namespace bbench {
namespace {

constexpr int kThreads = 256;

__global__ void pixel_lookup_kernel(const uint8_t* __restrict__ in, const float* __restrict__ table,
                                    float* __restrict__ out, int64_t total, int64_t C, int64_t H,
                                    int64_t W, int64_t sn, int64_t sc, int64_t sh, int64_t sw) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % W;
    const int64_t h = (i / W) % H;
    const int64_t c = (i / (W * H)) % C;
    const int64_t n = i / (W * H * C);
    out[i] = __ldg(table + c * 256 + in[n * sn + c * sc + h * sh + w * sw]);
  }
}

at::Tensor pixel_lookup_cuda(const at::Tensor& pixels, const at::Tensor& table) {
  check_pixel_lookup_args(pixels, table);
  TORCH_CHECK(pixels.is_cuda(), "pixel_lookup (CUDA kernel): inputs are on ", pixels.device());
  const c10::cuda::CUDAGuard guard(pixels.device());
  auto out = at::empty(pixels.sizes(), pixels.options().dtype(at::kFloat));
  const int64_t total = out.numel();
  if (total == 0) return out;  // before the reshape: -1 is ambiguous for 0 elements
  const int64_t C = pixels.size(-3), H = pixels.size(-2), W = pixels.size(-1);
  const at::Tensor images = pixels.reshape({-1, C, H, W});  // a view unless the strides forbid
  const at::Tensor lut = table.contiguous();
  const int sms = multiprocessor_count();
  const int blocks = static_cast<int>(
      std::min<int64_t>((total + kThreads - 1) / kThreads, static_cast<int64_t>(sms) * 32));
  pixel_lookup_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      images.const_data_ptr<uint8_t>(), lut.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
      total, C, H, W, images.stride(0), images.stride(1), images.stride(2), images.stride(3));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace bbench

TORCH_LIBRARY_IMPL(bbench, CUDA, m) {
  m.impl("pixel_lookup", &bbench::pixel_lookup_cuda);
}
