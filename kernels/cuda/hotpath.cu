// GPU launchers of the per-frame hot path (C ABI, no TensorRT or Python types). Kernels: hotpath_kernels.cuh.
#include <cuda_runtime.h>

#include "hotpath_kernels.cuh"

using namespace polypseg_cuda;

extern "C" {

// src: device BGR uint8 [H, W, 3] (row stride in bytes); dst: device [1, 3, h, w] float32 (fp16 = 0) or
// float16 (fp16 = 1).
cudaError_t polypseg_cuda_preprocess(const unsigned char* src, int H, int W, long long stride, int h, int w,
                                     const float* mean, const float* stdv, void* dst, int fp16, cudaStream_t stream) {
  float3_like scale, bias;
  for (int c = 0; c < 3; ++c) {
    scale.v[c] = 1.f / (255.f * stdv[c]);
    bias.v[c] = -mean[c] / stdv[c];
  }
  const dim3 block(32, 8), grid((w + 31) / 32, (h + 7) / 8);
  if (fp16)
    preprocess_kernel<pp_half><<<grid, block, 0, stream>>>(src, H, W, stride, h, w, scale, bias,
                                                            static_cast<pp_half*>(dst));
  else
    preprocess_kernel<float><<<grid, block, 0, stream>>>(src, H, W, stride, h, w, scale, bias,
                                                          static_cast<float*>(dst));
  return cudaGetLastError();
}

// frame: device BGR uint8 [H, W, 3] annotated in place; logits: device float32 [h, w]; fg_count: device counter
// (may be null), incremented by the number of foreground pixels.
cudaError_t polypseg_cuda_overlay(unsigned char* frame, int H, int W, long long stride, const float* logits, int h,
                                  int w, float logit_threshold, const unsigned char* fill, int alpha256,
                                  const unsigned char* outline, unsigned long long* fg_count, cudaStream_t stream) {
  uchar3_like f{{fill[0], fill[1], fill[2]}}, o{{outline[0], outline[1], outline[2]}};
  const dim3 block(32, 8), grid((W + 31) / 32, (H + 7) / 8);
  overlay_kernel<<<grid, block, 0, stream>>>(frame, H, W, stride, logits, h, w, logit_threshold, f, alpha256, o,
                                             fg_count);
  return cudaGetLastError();
}

}  // extern "C"
