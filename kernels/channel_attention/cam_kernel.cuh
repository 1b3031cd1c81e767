// ChannelAttention (DANet CAM as the guided-attention net runs it):
//   E = X·Xᵀ (C×C over the N = H·W positions),  A = softmax_j(rowmax(E) − E),  out = gamma · A·X + X
//
// Numerically safe in float16: E is accumulated in float32, and softmax(rowmax(E) − E) is evaluated as
// exp(rowmin(E) − E_j) / Σ (shift-invariant identity: the largest exponent is exactly 0, nothing overflows).
// One block per (batch, row c): threads compute E[c, :] into shared memory (barrier), reduce the row minimum and
// the normaliser (barriers), then write out[c, :] with the weights in shared memory.
#pragma once
#include "../cuda/compat.h"
#include "../cuda/fiber_emulator.h"

namespace polypseg_cam {

constexpr int kThreads = 128;
constexpr int kMaxC = 2048;

struct Params {
  int B, C, N;
  float gamma;
};

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
