// PositionAttention: out[b,c,n] = gamma · Σ_m softmax_m(q_n · k_m) · v[b,c,m] + x[b,c,n]   (DANet PAM, no 1/√d)
//
// Flash-style: the N×N attention matrix is never materialised. A block owns kQ queries (one thread each); for a
// chunk of kCh output channels it streams the keys in tiles of kK through shared memory (K tile and V tile loaded
// cooperatively, barrier, use, barrier) while every thread keeps an online softmax (running max, running sum) and
// kCh accumulators in registers. Scores are recomputed per channel chunk (C/kCh passes) to keep registers bounded.
// Float32 accumulation for float16 I/O.
#pragma once

// Launch shape and limits: the one definition, also read by the TensorRT plugin (position_attention_plugin.cpp
// includes this header with POLYPSEG_KERNEL_LIMITS_ONLY defined, which skips the kernel below).
namespace polypseg_pam {
constexpr int kQ = 64;      // queries per block (= threads per block)
constexpr int kK = 64;      // keys per shared-memory tile
constexpr int kCh = 16;     // output channels per pass
constexpr int kMaxD = 64;   // max query/key width (C/8 for C ≤ 512): 1 ≤ D ≤ kMaxD
}  // namespace polypseg_pam

#if !defined(POLYPSEG_KERNEL_LIMITS_ONLY)
#include "../cuda/compat.h"
#include "../cuda/fiber_emulator.h"

namespace polypseg_pam {

struct Params {
  int B, C, D, N;  // D = query/key channels
  float gamma;
};

// The launch of pam_kernel for p (used by the GPU launcher pam.cu, which the CPU tests run too): ⌈N/kQ⌉ × B blocks
// of kQ threads. False when p is outside the kernel's limits.
inline bool launch_config(const Params& p, dim3& grid, dim3& block) {
  if (p.B <= 0 || p.C <= 0 || p.N <= 0 || p.D <= 0 || p.D > kMaxD) return false;
  grid = dim3(static_cast<unsigned>((p.N + kQ - 1) / kQ), static_cast<unsigned>(p.B));
  block = dim3(kQ);
  return true;
}

// q, k: [B, D, N]; v, x, out: [B, C, N]
template <class T>
PP_GLOBAL void pam_kernel(const T* PP_RESTRICT q, const T* PP_RESTRICT k, const T* PP_RESTRICT v,
                          const T* PP_RESTRICT x, T* PP_RESTRICT out, Params p) {
  PP_SHARED(float, k_tile, kMaxD * kK);
  PP_SHARED(float, v_tile, kCh * kK);
  const int b = static_cast<int>(blockIdx.y);
  const int t = static_cast<int>(threadIdx.x);
  const int n = static_cast<int>(blockIdx.x) * kQ + t;
  const bool active = n < p.N;
  const long long qk_base = static_cast<long long>(b) * p.D * p.N;
  const long long cv_base = static_cast<long long>(b) * p.C * p.N;

  float qv[kMaxD];
  for (int d = 0; d < p.D; ++d) qv[d] = active ? pp_to_float(q[qk_base + static_cast<long long>(d) * p.N + n]) : 0.f;

  for (int c0 = 0; c0 < p.C; c0 += kCh) {
    const int nc = p.C - c0 < kCh ? p.C - c0 : kCh;
    float acc[kCh];
    for (int j = 0; j < kCh; ++j) acc[j] = 0.f;
    float run_max = -3.402823466e38f, run_sum = 0.f;
    for (int m0 = 0; m0 < p.N; m0 += kK) {
      const int nk = p.N - m0 < kK ? p.N - m0 : kK;
      // cooperative loads: K tile [D × nk], V tile [nc × nk]
      for (int i = t; i < p.D * kK; i += kQ) {
        const int d = i / kK, j = i % kK;
        k_tile[i] = j < nk ? pp_to_float(k[qk_base + static_cast<long long>(d) * p.N + m0 + j]) : 0.f;
      }
      for (int i = t; i < kCh * kK; i += kQ) {
        const int cc = i / kK, j = i % kK;
        v_tile[i] = (cc < nc && j < nk) ? pp_to_float(v[cv_base + static_cast<long long>(c0 + cc) * p.N + m0 + j]) : 0.f;
      }
      PP_SYNC();
      if (active) {
        for (int j = 0; j < nk; ++j) {
          float s = 0.f;
          for (int d = 0; d < p.D; ++d) s += qv[d] * k_tile[d * kK + j];
          const float new_max = s > run_max ? s : run_max;
          const float corr = expf(run_max - new_max);  // rescale what was accumulated under the old max
          const float w = expf(s - new_max);
          run_sum = run_sum * corr + w;
          for (int cc = 0; cc < nc; ++cc) acc[cc] = acc[cc] * corr + w * v_tile[cc * kK + j];
          run_max = new_max;
        }
      }
      PP_SYNC();  // the tiles are overwritten by the next iteration
    }
    if (active) {
      const float inv = 1.f / run_sum;
      for (int cc = 0; cc < nc; ++cc) {
        const long long o = cv_base + static_cast<long long>(c0 + cc) * p.N + n;
        out[o] = pp_from_float<T>(p.gamma * acc[cc] * inv + pp_to_float(x[o]));
      }
    }
  }
}

}  // namespace polypseg_pam
#endif  // POLYPSEG_KERNEL_LIMITS_ONLY
