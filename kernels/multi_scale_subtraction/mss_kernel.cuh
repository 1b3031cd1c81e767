// MultiScaleSubtraction: MSNet's subtraction unit |up(A) − B| fused with M2SNet's multi-scale terms.
//
//   D[n,c,y,x] = |a_c − b_c| + Σ_{k ∈ scales} | relu(g_k[c]·SA_k + h_k[c]) − relu(g_k[c]·SB_k + h_k[c]) |
//
// a = bilinear upsampling of A [N,C,h,w] to B's size [H,W] (half-pixel centres, align_corners=False), b = B, and
// S*_k = k×k zero-padded box sum of the channel sum (M2SNet's all-ones k×k convolution), g_k/h_k = the folded
// BatchNorm of that scale. With no scales this is MSNet's |up(A) − B|.
//
// One thread per output pixel computes all C channels. With scales, a block first stages the channel sums of a
// (tile + halo) in shared memory (barrier), then every thread reads its box sums from there. Float32 accumulation
// for float16 I/O. The same source runs on the CPU through kernels/cuda/fiber_emulator.h.
#pragma once
#include "../cuda/compat.h"
#include "../cuda/fiber_emulator.h"

namespace polypseg_mss {

constexpr int kTileX = 16, kTileY = 16, kHalo = 2;  // halo 2 covers the 5×5 box
constexpr int kSharedX = kTileX + 2 * kHalo, kSharedY = kTileY + 2 * kHalo;

struct Params {
  int N, C, h, w, H, W;
  int num_scales;  // 0 (MSNet) or 2 (M2SNet: k = 3 and 5)
  const float* g3;  // [C] folded BN scale/shift of the 3×3 term, then of the 5×5 term
  const float* h3;
  const float* g5;
  const float* h5;
};

// The launch of mss_kernel for p (used by the GPU launcher mss.cu, which the CPU tests run too): one kTileX × kTileY
// block per output tile (partial tiles at the right and bottom edges), grid.z = N. False when p is invalid.
inline bool launch_config(const Params& p, dim3& grid, dim3& block) {
  if (p.N <= 0 || p.C <= 0 || p.h <= 0 || p.w <= 0 || p.H <= 0 || p.W <= 0 || (p.num_scales != 0 && p.num_scales != 2))
    return false;
  if (p.num_scales != 0 && (!p.g3 || !p.h3 || !p.g5 || !p.h5)) return false;
  grid = dim3(static_cast<unsigned>((p.W + kTileX - 1) / kTileX), static_cast<unsigned>((p.H + kTileY - 1) / kTileY),
              static_cast<unsigned>(p.N));
  block = dim3(kTileX, kTileY);
  return true;
}

// Bilinear source taps (PyTorch/OpenCV half-pixel rule, clamped).
PP_HD inline void taps(int d, int n_src, int n_dst, int& i0, int& i1, float& f) {
  const float scale = static_cast<float>(n_src) / static_cast<float>(n_dst);
  float s = (static_cast<float>(d) + 0.5f) * scale - 0.5f;
  if (s < 0.f) s = 0.f;
  int i = static_cast<int>(s);
  if (i > n_src - 1) i = n_src - 1;
  i0 = i;
  i1 = i + 1 < n_src ? i + 1 : n_src - 1;
  f = s - static_cast<float>(i);
  if (i0 == i1) f = 0.f;
}

template <class T>
PP_HD inline float up_a(const T* A, const Params& p, int n, int c, int y, int x) {
  int x0, x1, y0, y1;
  float fx, fy;
  taps(x, p.w, p.W, x0, x1, fx);
  taps(y, p.h, p.H, y0, y1, fy);
  const T* a = A + (static_cast<long long>(n) * p.C + c) * p.h * p.w;
  const float top = (1.f - fx) * pp_to_float(a[y0 * p.w + x0]) + fx * pp_to_float(a[y0 * p.w + x1]);
  const float bot = (1.f - fx) * pp_to_float(a[y1 * p.w + x0]) + fx * pp_to_float(a[y1 * p.w + x1]);
  return (1.f - fy) * top + fy * bot;
}

template <class T>
PP_GLOBAL void mss_kernel(const T* PP_RESTRICT A, const T* PP_RESTRICT B, T* PP_RESTRICT D, Params p) {
  const int n = static_cast<int>(blockIdx.z);
  const int x = static_cast<int>(blockIdx.x) * kTileX + static_cast<int>(threadIdx.x);
  const int y = static_cast<int>(blockIdx.y) * kTileY + static_cast<int>(threadIdx.y);
  const long long plane = static_cast<long long>(p.H) * p.W;
  const T* b = B + static_cast<long long>(n) * p.C * plane;
  T* d = D + static_cast<long long>(n) * p.C * plane;

  float box3a = 0.f, box3b = 0.f, box5a = 0.f, box5b = 0.f;
  if (p.num_scales > 0) {
    PP_SHARED(float, sum_a, kSharedX * kSharedY);
    PP_SHARED(float, sum_b, kSharedX * kSharedY);
    const int tid = static_cast<int>(threadIdx.y) * kTileX + static_cast<int>(threadIdx.x);
    const int x_origin = static_cast<int>(blockIdx.x) * kTileX - kHalo;
    const int y_origin = static_cast<int>(blockIdx.y) * kTileY - kHalo;
    for (int i = tid; i < kSharedX * kSharedY; i += kTileX * kTileY) {
      const int sx = x_origin + i % kSharedX, sy = y_origin + i / kSharedX;
      float sa = 0.f, sb = 0.f;
      if (sx >= 0 && sy >= 0 && sx < p.W && sy < p.H) {  // zero padding outside the image
        for (int c = 0; c < p.C; ++c) {
          sa += up_a(A, p, n, c, sy, sx);
          sb += pp_to_float(b[c * plane + static_cast<long long>(sy) * p.W + sx]);
        }
      }
      sum_a[i] = sa;
      sum_b[i] = sb;
    }
    PP_SYNC();
    const int lx = static_cast<int>(threadIdx.x) + kHalo, ly = static_cast<int>(threadIdx.y) + kHalo;
    for (int dy = -2; dy <= 2; ++dy)
      for (int dx = -2; dx <= 2; ++dx) {
        const int j = (ly + dy) * kSharedX + (lx + dx);
        box5a += sum_a[j];
        box5b += sum_b[j];
        if (dx >= -1 && dx <= 1 && dy >= -1 && dy <= 1) {
          box3a += sum_a[j];
          box3b += sum_b[j];
        }
      }
  }
  if (x >= p.W || y >= p.H) return;  // after the barrier: every thread of the block reached it
  const long long o = static_cast<long long>(y) * p.W + x;
  for (int c = 0; c < p.C; ++c) {
    const float av = up_a(A, p, n, c, y, x);
    const float bv = pp_to_float(b[c * plane + o]);
    float v = fabsf(av - bv);
    if (p.num_scales > 0) {
      const float a3 = fmaxf(p.g3[c] * box3a + p.h3[c], 0.f), b3 = fmaxf(p.g3[c] * box3b + p.h3[c], 0.f);
      const float a5 = fmaxf(p.g5[c] * box5a + p.h5[c], 0.f), b5 = fmaxf(p.g5[c] * box5b + p.h5[c], 0.f);
      v += fabsf(a3 - b3) + fabsf(a5 - b5);
    }
    d[c * plane + o] = pp_from_float<T>(v);
  }
}

}  // namespace polypseg_mss
