// GPU launchers of the per-frame hot path (C ABI, no TensorRT or Python types). Kernels: hotpath_kernels.cuh.
// The CPU tests compile and run these very functions (kernels/bindings/ext.cpp includes this file; PP_LAUNCH_NOSYNC
// is the grid emulator there).
#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include "hotpath_kernels.cuh"

extern "C" {

// src: device BGR uint8 [H, W, 3] (row stride in bytes); dst: device [1, 3, h, w] float32 (fp16 = 0) or
// float16 (fp16 = 1); mean, stdv: host, RGB order.
cudaError_t polypseg_cuda_preprocess(const unsigned char* src, int H, int W, long long stride, int h, int w,
                                     const float* mean, const float* stdv, void* dst, int fp16, cudaStream_t stream) {
  using namespace polypseg_cuda;
  if (H <= 0 || W <= 0 || h <= 0 || w <= 0) return cudaErrorInvalidValue;
  float3_like scale, bias;
  normalisation(mean, stdv, scale, bias);
  dim3 grid, block;
  pixel_grid(w, h, grid, block);
  if (fp16)
    PP_LAUNCH_NOSYNC(preprocess_kernel<pp_half>, grid, block, stream)(src, H, W, stride, h, w, scale, bias,
                                                                      static_cast<pp_half*>(dst));
  else
    PP_LAUNCH_NOSYNC(preprocess_kernel<float>, grid, block, stream)(src, H, W, stride, h, w, scale, bias,
                                                                    static_cast<float*>(dst));
  return cudaGetLastError();
}

// frame: device BGR uint8 [H, W, 3] annotated in place; logits: device float32 [h, w]; fill, outline: host BGR;
// fg_count: device counter (may be null), incremented by the number of foreground pixels.
cudaError_t polypseg_cuda_overlay(unsigned char* frame, int H, int W, long long stride, const float* logits, int h,
                                  int w, float logit_threshold, const unsigned char* fill, int alpha256,
                                  const unsigned char* outline, unsigned long long* fg_count, cudaStream_t stream) {
  using namespace polypseg_cuda;
  if (H <= 0 || W <= 0 || h <= 0 || w <= 0) return cudaErrorInvalidValue;
  uchar3_like f{{fill[0], fill[1], fill[2]}}, o{{outline[0], outline[1], outline[2]}};
  dim3 grid, block;
  pixel_grid(W, H, grid, block);
  PP_LAUNCH_NOSYNC(overlay_kernel, grid, block, stream)(frame, H, W, stride, logits, h, w, logit_threshold, f,
                                                        alpha256, o, fg_count);
  return cudaGetLastError();
}

}  // extern "C"
