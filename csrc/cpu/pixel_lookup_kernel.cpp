// CPU implementation of bbench::pixel_lookup (see docs/kernels.md).
//
// out[..., c, h, w] = table[c, pixels[..., c, h, w]]: uint8 pixels of any strides (frames
// leave the resize channels-last) to a contiguous float32 tensor in one pass. Used for the
// pixel normalisation, whose table holds the reference's value for each of the 256 levels, so
// the result equals the element-wise reference by construction; one pass with a 1 KiB table
// replaces the reference's four passes over the float32 batch, one of them a transposing
// conversion.
//
// Parallel over (image, row). Within a row the loop follows the input's memory order: pixel by
// pixel across the channels for channels-last input (channel stride below the column stride),
// channel plane by plane otherwise, so the reads are sequential either way.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"

namespace bbench {
namespace {

constexpr int64_t kRowsPerTask = 16;

// One row of channels-last input, pixel by pixel; kC > 0 fixes the channel count at compile
// time (RGB, flow), 0 reads it from `channels`.
template <int kC>
inline void lookup_row_pixel_major(const uint8_t* __restrict src, const float* __restrict tab,
                                   float* __restrict row_out, int64_t channels, int64_t W,
                                   int64_t sc, int64_t sw, int64_t plane) {
  const int64_t C = kC > 0 ? kC : channels;
  for (int64_t w = 0; w < W; ++w) {
    const uint8_t* px = src + w * sw;
    for (int64_t c = 0; c < C; ++c) row_out[c * plane + w] = tab[c * 256 + px[c * sc]];
  }
}

at::Tensor pixel_lookup_cpu(const at::Tensor& pixels, const at::Tensor& table) {
  check_pixel_lookup_args(pixels, table);
  TORCH_CHECK(pixels.device().is_cpu(), "pixel_lookup (CPU kernel): inputs are on ",
              pixels.device());
  auto out = at::empty(pixels.sizes(), pixels.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;  // before the reshape: -1 is ambiguous for 0 elements
  const int64_t C = pixels.size(-3), H = pixels.size(-2), W = pixels.size(-1);
  // (images, C, H, W): a view for contiguous and channels-last tensors, a copy otherwise.
  const at::Tensor images = pixels.reshape({-1, C, H, W});
  const int64_t N = images.size(0);
  const at::Tensor lut = table.contiguous();
  const uint8_t* in = images.const_data_ptr<uint8_t>();
  const float* tab = lut.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t sn = images.stride(0), sc = images.stride(1), sh = images.stride(2),
                sw = images.stride(3);
  const int64_t plane = H * W;
  const bool pixel_major = sc < sw;
  at::parallel_for(0, N * H, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      const uint8_t* src = in + n * sn + h * sh;
      float* row_out = dst + n * C * plane + h * W;  // channel 0 of this row
      if (pixel_major && C == 3) {
        lookup_row_pixel_major<3>(src, tab, row_out, C, W, sc, sw, plane);
      } else if (pixel_major && C == 2) {
        lookup_row_pixel_major<2>(src, tab, row_out, C, W, sc, sw, plane);
      } else if (pixel_major) {
        lookup_row_pixel_major<0>(src, tab, row_out, C, W, sc, sw, plane);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const uint8_t* s = src + c * sc;
          const float* t = tab + c * 256;
          float* o = row_out + c * plane;
          for (int64_t w = 0; w < W; ++w) o[w] = t[s[w * sw]];
        }
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace bbench

TORCH_LIBRARY_IMPL(bbench, CPU, m) {
  m.impl("pixel_lookup", &bbench::pixel_lookup_cpu);
}
