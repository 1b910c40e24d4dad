// Argument validation shared by the CPU and CUDA kernels (messages quote the offending shapes).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

namespace bbench {

inline bool is_supported_float(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Validates everything that can be checked without reading device memory.
inline void check_grad_scale_args(const at::TensorList& grads, const at::Tensor& group,
                                  const at::Tensor& coeff,
                                  const std::optional<at::Tensor>& noise_std) {
  const int64_t n = static_cast<int64_t>(grads.size());
  TORCH_CHECK_VALUE(group.dim() == 1 && group.size(0) == n,
              "grad_scale_: group must be an int64 tensor of shape [len(grads)] = [", n, "], got ",
              group.sizes());
  TORCH_CHECK_VALUE(group.scalar_type() == at::kLong,
              "grad_scale_: group must be int64, got ", group.scalar_type());
  TORCH_CHECK_VALUE(coeff.dim() == 1 && at::isFloatingType(coeff.scalar_type()),
                    "grad_scale_: coeff must be a floating tensor of shape [G], got ", coeff.sizes(),
                    " ", coeff.scalar_type());
  if (noise_std.has_value()) {
    TORCH_CHECK_VALUE(noise_std->dim() == 1 && noise_std->size(0) == coeff.size(0) &&
                          at::isFloatingType(noise_std->scalar_type()),
                      "grad_scale_: noise_std must be None or a floating tensor of the shape of coeff [",
                      coeff.size(0), "], got ", noise_std->sizes(), " ", noise_std->scalar_type());
  }
  if (n == 0) return;
  const auto dev = grads[0].device();
  const auto dt = grads[0].scalar_type();
  TORCH_CHECK_VALUE(is_supported_float(dt),
              "grad_scale_: grads must be float32, float64, bfloat16 or float16, got ", dt);
  for (const auto i : c10::irange(n)) {
    TORCH_CHECK_VALUE(grads[i].device() == dev && grads[i].scalar_type() == dt,
                      "grad_scale_: all grads must share one device and dtype; grads[0] is ", dt,
                      " on ", dev, ", grads[", i, "] (shape ", grads[i].sizes(), ") is ",
                      grads[i].scalar_type(), " on ", grads[i].device());
  }
  TORCH_CHECK_VALUE(coeff.size(0) > 0, "grad_scale_: coeff has shape ", coeff.sizes(), " but ", n,
                    " grads need a group");
}

// Range check of host-side group indices (message as the Python check's).
inline void check_group_range(const int64_t* g, int64_t n, int64_t stride, int64_t G) {
  if (n == 0) return;
  int64_t lo = g[0], hi = g[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, g[i * stride]);
    hi = std::max(hi, g[i * stride]);
  }
  TORCH_CHECK_VALUE(lo >= 0 && hi < G, "grad_scale_: group values must lie in [0, G) = [0, ", G,
                    ") (coeff of shape [", G, "]), got values in [", lo, ", ", hi, "]");
}

struct SubsetDims {
  int64_t M, N, K, S;
};

inline SubsetDims check_subset_correct_args(const at::Tensor& contrib, const at::Tensor& absent,
                                            const at::Tensor& bias, const at::Tensor& labels) {
  TORCH_CHECK_VALUE(contrib.dim() == 3, "subset_correct: contrib must have shape [M, N, K], got ",
              contrib.sizes());
  const int64_t M = contrib.size(0), N = contrib.size(1), K = contrib.size(2);
  TORCH_CHECK_VALUE(M <= 16, "subset_correct: at most 16 modalities (2^M subsets), got contrib of shape ",
              contrib.sizes());
  TORCH_CHECK_VALUE(K >= 1, "subset_correct: need at least one class, got contrib of shape ",
              contrib.sizes());
  TORCH_CHECK_VALUE(absent.dim() == 2 && absent.size(0) == M && absent.size(1) == K,
              "subset_correct: absent must have shape [M, K] = [", M, ", ", K,
              "] to match contrib ", contrib.sizes(), ", got ", absent.sizes());
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == K, "subset_correct: bias must have shape [K] = [",
              K, "] to match contrib ", contrib.sizes(), ", got ", bias.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == N,
              "subset_correct: labels must have shape [N] = [", N, "] to match contrib ",
              contrib.sizes(), ", got ", labels.sizes());
  TORCH_CHECK_VALUE(is_supported_float(contrib.scalar_type()),
              "subset_correct: contrib must be float32, float64, bfloat16 or float16, got ",
              contrib.scalar_type());
  TORCH_CHECK_VALUE(absent.scalar_type() == contrib.scalar_type() &&
                  bias.scalar_type() == contrib.scalar_type(),
              "subset_correct: contrib, absent and bias must share a dtype, got ",
              contrib.scalar_type(), ", ", absent.scalar_type(), ", ", bias.scalar_type());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, "subset_correct: labels must be int64, got ",
              labels.scalar_type(), " of shape ", labels.sizes());
  const auto dev = contrib.device();
  TORCH_CHECK_VALUE(absent.device() == dev && bias.device() == dev && labels.device() == dev,
              "subset_correct: all inputs must be on one device, got contrib on ", dev,
              ", absent on ", absent.device(), ", bias on ", bias.device(), ", labels on ",
              labels.device());
  return SubsetDims{M, N, K, int64_t{1} << M};
}

// Range check of the labels (one host read on CUDA).
inline void check_labels_in_range(const at::Tensor& labels, int64_t K) {
  if (labels.numel() == 0) return;
  const auto mm = labels.aminmax();
  const int64_t lo = std::get<0>(mm).item<int64_t>();
  const int64_t hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < K, "subset_correct: labels must lie in [0, K) = [0, ", K,
              "), got values in [", lo, ", ", hi, "] (labels of shape ", labels.sizes(), ")");
}

// pixel_lookup: uint8 (..., C, H, W) pixels, a float32 [C, 256] table on the same device.
inline void check_pixel_lookup_args(const at::Tensor& pixels, const at::Tensor& table) {
  TORCH_CHECK_VALUE(pixels.dim() >= 3, "pixel_lookup: pixels must have shape (..., C, H, W), got ",
                    pixels.sizes());
  TORCH_CHECK_VALUE(pixels.scalar_type() == at::kByte, "pixel_lookup: pixels must be uint8, got ",
                    pixels.scalar_type(), " of shape ", pixels.sizes());
  const int64_t C = pixels.size(-3);
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(0) == C && table.size(1) == 256 &&
                        table.scalar_type() == at::kFloat,
                    "pixel_lookup: table must be float32 of shape [C, 256] = [", C,
                    ", 256] for pixels of shape ", pixels.sizes(), ", got ", table.scalar_type(),
                    " of shape ", table.sizes());
  TORCH_CHECK_VALUE(table.device() == pixels.device(), "pixel_lookup: pixels are on ",
                    pixels.device(), ", table on ", table.device());
}

}  // namespace bbench
