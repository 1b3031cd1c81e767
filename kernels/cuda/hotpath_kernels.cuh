// CUDA versions of the per-frame hot path (see kernels/src/hotpath.h for the CPU versions and the semantics).
// Compiled by nvcc for the GPU pipeline, and by the host compiler (compat.h) for CPU execution in tests.
#pragma once
#include "bilinear.h"
#include "compat.h"

namespace polypseg_cuda {

struct float3_like {
  float v[3];
};
struct uchar3_like {
  unsigned char v[3];
};

// Launch shape of both kernels: one thread per output pixel, kBlockX × kBlockY threads per block, partial blocks at
// the right and bottom edges. Used by the GPU launchers (hotpath.cu), which the CPU tests run too.
constexpr int kBlockX = 32, kBlockY = 8;
inline void pixel_grid(int width, int height, dim3& grid, dim3& block) {
  block = dim3(kBlockX, kBlockY);
  grid = dim3(static_cast<unsigned>((width + kBlockX - 1) / kBlockX),
              static_cast<unsigned>((height + kBlockY - 1) / kBlockY));
}

// (v/255 − mean[c]) / std[c] as v·scale[c] + bias[c]; mean, std and the planes are in RGB order.
inline void normalisation(const float* mean, const float* stdv, float3_like& scale, float3_like& bias) {
  for (int c = 0; c < 3; ++c) {
    scale.v[c] = 1.f / (255.f * stdv[c]);
    bias.v[c] = -mean[c] / stdv[c];
  }
}

// Bilinear taps: the one definition shared with the C++ hot path (bilinear.h).
using polypseg_bilinear::src_coord;

// One thread per output pixel: bilinear sample of the BGR frame, RGB planes, (v/255 − mean)/std.
// OutT is float or pp_half (__half under nvcc, a round-to-nearest-even 16-bit type on the CPU).
template <class OutT>
PP_GLOBAL void preprocess_kernel(const unsigned char* PP_RESTRICT src, int H, int W, long long stride, int h, int w,
                                 float3_like scale, float3_like bias, OutT* PP_RESTRICT dst) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= w || y >= h) return;
  int x0, x1, y0, y1;
  float fx, fy;
  src_coord(x, polypseg_bilinear::scale(W, w), W, x0, x1, fx);
  src_coord(y, polypseg_bilinear::scale(H, h), H, y0, y1, fy);
  const unsigned char* r0 = src + y0 * stride;
  const unsigned char* r1 = src + y1 * stride;
  const long long plane = static_cast<long long>(h) * w, o = static_cast<long long>(y) * w + x;
  for (int c = 0; c < 3; ++c) {
    const float top = (1.f - fx) * r0[3 * x0 + c] + fx * r0[3 * x1 + c];
    const float bot = (1.f - fx) * r1[3 * x0 + c] + fx * r1[3 * x1 + c];
    const float v = (1.f - fy) * top + fy * bot;
    const int plane_idx = 2 - c;  // BGR → RGB
    dst[plane_idx * plane + o] = static_cast<OutT>(v * scale.v[plane_idx] + bias.v[plane_idx]);
  }
}

// Foreground test of frame pixel (X, Y): bilinear logit at the frame size above the logit threshold.
PP_HD inline int fg_at(const float* PP_RESTRICT logits, int h, int w, int H, int W, int X, int Y, float thr) {
  int x0, x1, y0, y1;
  float fx, fy;
  src_coord(X, polypseg_bilinear::scale(w, W), w, x0, x1, fx);
  src_coord(Y, polypseg_bilinear::scale(h, H), h, y0, y1, fy);
  const float top = (1.f - fx) * logits[y0 * w + x0] + fx * logits[y0 * w + x1];
  const float bot = (1.f - fx) * logits[y1 * w + x0] + fx * logits[y1 * w + x1];
  return ((1.f - fy) * top + fy * bot) > thr ? 1 : 0;
}

// One thread per frame pixel: fill where foreground, outline where the 3×3 neighbourhood is mixed.
PP_GLOBAL void overlay_kernel(unsigned char* PP_RESTRICT frame, int H, int W, long long stride,
                              const float* PP_RESTRICT logits, int h, int w, float thr, uchar3_like fill, int alpha,
                              uchar3_like outline, unsigned long long* PP_RESTRICT fg_count) {
  const int X = blockIdx.x * blockDim.x + threadIdx.x;
  const int Y = blockIdx.y * blockDim.y + threadIdx.y;
  if (X >= W || Y >= H) return;
  int any = 0, all = 1;
  const int centre = fg_at(logits, h, w, H, W, X, Y, thr);
  for (int dy = -1; dy <= 1; ++dy)
    for (int dx = -1; dx <= 1; ++dx) {
      const int xx = X + dx, yy = Y + dy;
      if (xx < 0 || yy < 0 || xx >= W || yy >= H) continue;
      const int m = (dx == 0 && dy == 0) ? centre : fg_at(logits, h, w, H, W, xx, yy, thr);
      any |= m;
      all &= m;
    }
  unsigned char* p = frame + Y * stride + 3 * X;
  if (any != all) {
    p[0] = outline.v[0];
    p[1] = outline.v[1];
    p[2] = outline.v[2];
  } else if (all) {
    for (int c = 0; c < 3; ++c) p[c] = static_cast<unsigned char>((p[c] * (256 - alpha) + fill.v[c] * alpha + 128) >> 8);
  }
  if (centre && fg_count) atomicAdd(fg_count, 1ULL);
}

}  // namespace polypseg_cuda
