// ChannelAttention (DANet CAM as the guided-attention net runs it):
//   E = X·Xᵀ (C×C over the N = H·W positions),  A = softmax_j(rowmax(E) − E),  out = gamma · A·X + X
//
// Numerically safe in float16: E is accumulated in float32, and softmax(rowmax(E) − E) is evaluated as
// exp(rowmin(E) − E_j) / Σ (shift-invariant identity: the largest exponent is exactly 0, nothing overflows).
// One block per (batch, row c): threads compute E[c, :] into shared memory (barrier), reduce the row minimum and
// the normaliser (barriers), then write out[c, :] with the weights in shared memory.
#pragma once

// Launch shape and limits: the one definition, also read by the TensorRT plugin (channel_attention_plugin.cpp
// includes this header with POLYPSEG_KERNEL_LIMITS_ONLY defined, which skips the kernel below).
namespace polypseg_cam {
constexpr int kThreads = 128;  // threads per block
constexpr int kMaxC = 2048;    // one row of E lives in shared memory: 1 ≤ C ≤ kMaxC
}  // namespace polypseg_cam

#if !defined(POLYPSEG_KERNEL_LIMITS_ONLY)
#include "../cuda/compat.h"
#include "../cuda/fiber_emulator.h"

namespace polypseg_cam {

struct Params {
  int B, C, N;
  float gamma;
};

// The launch of cam_kernel for p (used by the GPU launcher cam.cu, which the CPU tests run too): one block of
// kThreads per (row c, image b). False when p is outside the kernel's limits.
inline bool launch_config(const Params& p, dim3& grid, dim3& block) {
  if (p.B <= 0 || p.C <= 0 || p.N <= 0 || p.C > kMaxC) return false;
  grid = dim3(static_cast<unsigned>(p.C), static_cast<unsigned>(p.B));
  block = dim3(kThreads);
  return true;
}

template <class T>
PP_GLOBAL void cam_kernel(const T* PP_RESTRICT x, T* PP_RESTRICT out, Params p) {
  PP_SHARED(float, e_row, kMaxC);
  PP_SHARED(float, red, kThreads);
  const int c = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y);
  const int t = static_cast<int>(threadIdx.x);
  const T* xb = x + static_cast<long long>(b) * p.C * p.N;
  const T* xc = xb + static_cast<long long>(c) * p.N;

  for (int j = t; j < p.C; j += kThreads) {  // E[c, j]
    const T* xj = xb + static_cast<long long>(j) * p.N;
    float s = 0.f;
    for (int n = 0; n < p.N; ++n) s += pp_to_float(xc[n]) * pp_to_float(xj[n]);
    e_row[j] = s;
  }
  PP_SYNC();
  // row minimum (tree reduction)
  float m = 3.402823466e38f;
  for (int j = t; j < p.C; j += kThreads) m = e_row[j] < m ? e_row[j] : m;
  red[t] = m;
  PP_SYNC();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s && red[t + s] < red[t]) red[t] = red[t + s];
    PP_SYNC();
  }
  const float row_min = red[0];
  PP_SYNC();
  // weights exp(min − E) and their sum
  float part = 0.f;
  for (int j = t; j < p.C; j += kThreads) {
    const float w = expf(row_min - e_row[j]);
    e_row[j] = w;
    part += w;
  }
  red[t] = part;
  PP_SYNC();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    PP_SYNC();
  }
  const float inv = 1.f / red[0];
  T* oc = out + (static_cast<long long>(b) * p.C + c) * p.N;
  for (int n = t; n < p.N; n += kThreads) {
    float acc = 0.f;
    for (int j = 0; j < p.C; ++j) acc += e_row[j] * pp_to_float(xb[static_cast<long long>(j) * p.N + n]);
    oc[n] = pp_from_float<T>(p.gamma * acc * inv + pp_to_float(xc[n]));
  }
}

}  // namespace polypseg_cam
#endif  // POLYPSEG_KERNEL_LIMITS_ONLY
