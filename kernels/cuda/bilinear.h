// Bilinear source taps with OpenCV INTER_LINEAR semantics (half-pixel centres, clamped at both ends), defined once
// for every path that resamples a frame or a logit map: the CUDA kernels (hotpath_kernels.cuh), their CPU execution
// in the tests, and the C++ hot path (src/hotpath.cpp). One definition in one arithmetic (float, as on the GPU), so
// CPU and GPU pre/post-processing pick the same source pixels and weights.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define POLYPSEG_BILINEAR_HD __host__ __device__
#else
#define POLYPSEG_BILINEAR_HD
#endif

namespace polypseg_bilinear {

// Source step per destination pixel when resizing n_src samples to n_dst.
POLYPSEG_BILINEAR_HD inline float scale(int n_src, int n_dst) {
  return static_cast<float>(n_src) / static_cast<float>(n_dst);
}

// Destination index d → source taps i0, i1 and the weight f of i1 (1 − f of i0).
POLYPSEG_BILINEAR_HD inline void src_coord(int d, float step, int n_src, int& i0, int& i1, float& f) {
  const float s = (static_cast<float>(d) + 0.5f) * step - 0.5f;
  int i = static_cast<int>(floorf(s));
  float fr = s - static_cast<float>(i);
  if (i < 0) {
    i = 0;
    fr = 0.f;
  }
  if (i >= n_src - 1) {
    i = n_src - 1;
    fr = 0.f;
  }
  i0 = i;
  i1 = i + 1 < n_src ? i + 1 : n_src - 1;
  f = fr;
}

}  // namespace polypseg_bilinear
