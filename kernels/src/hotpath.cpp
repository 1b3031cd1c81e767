// See hotpath.h. Written for clarity first: per-row coefficient tables, contiguous inner loops the compiler
// vectorises, rows split over std::threads.
#include "hotpath.h"

#include "../cuda/bilinear.h"  // the bilinear taps, defined once for the CUDA kernels and this file

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
#define POLYPSEG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define POLYPSEG_CLONES
#endif

namespace polypseg {
namespace {

template <class F>
void parallel_rows(int rows, int threads, F&& fn) {
  threads = std::max(1, std::min(threads, rows));
  if (threads == 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  int chunk = (rows + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    int r0 = t * chunk, r1 = std::min(rows, r0 + chunk);
    if (r0 < r1) pool.emplace_back([&fn, r0, r1] { fn(r0, r1); });
  }
  fn(0, std::min(rows, chunk));
  for (auto& th : pool) th.join();
}

struct Taps {
  std::vector<int> i0, i1;
  std::vector<float> f;
  Taps(int n_dst, int n_src) : i0(n_dst), i1(n_dst), f(n_dst) {
    const float step = polypseg_bilinear::scale(n_src, n_dst);
    for (int d = 0; d < n_dst; ++d) polypseg_bilinear::src_coord(d, step, n_src, i0[d], i1[d], f[d]);
  }
};

POLYPSEG_CLONES
void pre_row(const uint8_t* r0, const uint8_t* r1, float fy, const Taps& tx, int w, const float* scale,
             const float* bias, float* out_r, float* out_g, float* out_b) {
  const float gy = 1.0f - fy;
  for (int x = 0; x < w; ++x) {
    const int a = 3 * tx.i0[x], b = 3 * tx.i1[x];
    const float fx = tx.f[x], gx = 1.0f - fx;
    float v[3];
    for (int c = 0; c < 3; ++c) {
      float top = gx * r0[a + c] + fx * r0[b + c];
      float bot = gx * r1[a + c] + fx * r1[b + c];
      v[c] = gy * top + fy * bot;
    }
    // BGR → RGB, then (v / 255 - mean) / std folded into one multiply-add per channel
    out_r[x] = v[2] * scale[0] + bias[0];
    out_g[x] = v[1] * scale[1] + bias[1];
    out_b[x] = v[0] * scale[2] + bias[2];
  }
}

POLYPSEG_CLONES
void logit_row(const float* l0, const float* l1, float fy, const Taps& tx, int w, int W, float thr, float* tmp,
               uint8_t* m) {
  // vertical first on the short source row, then horizontal taps into it (tmp stays in L1)
  const float gy = 1.0f - fy;
  for (int j = 0; j < w; ++j) tmp[j] = gy * l0[j] + fy * l1[j];
  for (int x = 0; x < W; ++x) {
    const float fx = tx.f[x];
    m[x] = ((1.0f - fx) * tmp[tx.i0[x]] + fx * tmp[tx.i1[x]]) > thr ? 1 : 0;
  }
}

// Paints one frame row from the masks of rows y-1, y, y+1. Rows without any foreground in the 3-row window are
// skipped entirely (most of a colonoscopy frame), the rest is painted only between the first and last hit.
POLYPSEG_CLONES
int64_t paint_row(uint8_t* px, const uint8_t* up, const uint8_t* mid, const uint8_t* down, int W, const uint8_t* fill,
                  int alpha, const uint8_t* outline, uint8_t* anyv, uint8_t* allv) {
  int64_t fg = 0;
  uint8_t any_row = 0;
  for (int x = 0; x < W; ++x) {
    anyv[x] = up[x] | mid[x] | down[x];
    allv[x] = up[x] & mid[x] & down[x];
    fg += mid[x];
    any_row |= anyv[x];
  }
  if (!any_row) return 0;
  int x0 = 0, x1 = W - 1;
  while (!anyv[x0]) ++x0;
  while (!anyv[x1]) --x1;
  x0 = x0 > 0 ? x0 - 1 : 0;
  x1 = x1 < W - 1 ? x1 + 1 : W - 1;
  const int keep = 256 - alpha;
  for (int x = x0; x <= x1; ++x) {
    const int xl = x > 0 ? x - 1 : x, xr = x < W - 1 ? x + 1 : x;
    const int any = anyv[xl] | anyv[x] | anyv[xr];
    const int all = allv[xl] & allv[x] & allv[xr];
    uint8_t* p = px + 3 * x;
    if (any != all) {
      p[0] = outline[0];
      p[1] = outline[1];
      p[2] = outline[2];
    } else if (all) {
      for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>((p[c] * keep + fill[c] * alpha + 128) >> 8);
    }
  }
  return fg;
}

}  // namespace

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow → inf
  if (absx < 0x38800000u) {                                               // subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(absx >> 23);  // value = mant · 2^(e−150) = h · 2^−24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((absx - 0x38000000u) >> 13);
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

void preprocess_bgr(const uint8_t* src, int H, int W, std::ptrdiff_t src_stride, int h, int w, const float mean[3],
                    const float stdv[3], float* dst_f32, uint16_t* dst_f16, int threads) {
  const Taps tx(w, W), ty(h, H);
  float scale[3], bias[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * stdv[c]);
    bias[c] = -mean[c] / stdv[c];
  }
  const std::size_t plane = static_cast<std::size_t>(h) * w;
  parallel_rows(h, threads, [&](int y0, int y1) {
    std::vector<float> tmp(dst_f16 ? 3 * static_cast<std::size_t>(w) : 0);
    for (int y = y0; y < y1; ++y) {
      const uint8_t* r0 = src + ty.i0[y] * src_stride;
      const uint8_t* r1 = src + ty.i1[y] * src_stride;
      if (dst_f32) {
        float* base = dst_f32 + static_cast<std::size_t>(y) * w;
        pre_row(r0, r1, ty.f[y], tx, w, scale, bias, base, base + plane, base + 2 * plane);
      } else {
        pre_row(r0, r1, ty.f[y], tx, w, scale, bias, tmp.data(), tmp.data() + w, tmp.data() + 2 * w);
        for (int c = 0; c < 3; ++c) {
          uint16_t* o = dst_f16 + c * plane + static_cast<std::size_t>(y) * w;
          for (int x = 0; x < w; ++x) o[x] = float_to_half(tmp[c * w + x]);
        }
      }
    }
  });
}

int64_t overlay(uint8_t* frame, int H, int W, std::ptrdiff_t stride, const float* logits, int h, int w,
                float logit_threshold, const uint8_t fill[3], int alpha256, const uint8_t outline[3], uint8_t* mask,
                int threads) {
  const Taps tx(W, w), ty(H, h);
  alpha256 = std::max(0, std::min(256, alpha256));
  // A resized value is a convex combination of four source logits, so a frame row whose two source rows stay
  // below the threshold is background without interpolating it (most rows of a colonoscopy frame). The margin keeps
  // rows with values within rounding of the threshold on the exact path.
  std::vector<float> row_max(h);
  for (int j = 0; j < h; ++j) {
    const float* l = logits + static_cast<std::size_t>(j) * w;
    float m = l[0];
    for (int i = 1; i < w; ++i) m = std::max(m, l[i]);
    row_max[j] = m;
  }
  const float skip_below = logit_threshold - 1e-4f * (1.0f + std::fabs(logit_threshold));
  std::atomic<int64_t> total{0};
  parallel_rows(H, threads, [&](int y0, int y1) {
    // masks of rows y0-1 .. y1 (halo of one row each side), computed by this thread alone
    const int first = std::max(0, y0 - 1), last = std::min(H - 1, y1);
    std::vector<uint8_t> rows(static_cast<std::size_t>(last - first + 1) * W), anyv(W), allv(W);
    std::vector<float> tmp(w);
    for (int y = first; y <= last; ++y) {
      uint8_t* m = rows.data() + static_cast<std::size_t>(y - first) * W;
      if (std::max(row_max[ty.i0[y]], row_max[ty.i1[y]]) < skip_below) {
        std::memset(m, 0, W);
        continue;
      }
      logit_row(logits + static_cast<std::size_t>(ty.i0[y]) * w, logits + static_cast<std::size_t>(ty.i1[y]) * w,
                ty.f[y], tx, w, W, logit_threshold, tmp.data(), m);
    }
    int64_t fg = 0;
    for (int y = y0; y < y1; ++y) {
      const uint8_t* mid = rows.data() + static_cast<std::size_t>(y - first) * W;
      const uint8_t* up = y > 0 ? mid - W : mid;
      const uint8_t* down = y < H - 1 ? mid + W : mid;
      fg += paint_row(frame + y * stride, up, mid, down, W, fill, alpha256, outline, anyv.data(), allv.data());
      if (mask) std::memcpy(mask + static_cast<std::size_t>(y) * W, mid, W);
    }
    total += fg;
  });
  return total.load();
}

}  // namespace polypseg
