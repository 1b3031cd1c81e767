// GPU launcher of MultiScaleSubtraction (C ABI; no TensorRT types: the plugin's enqueue calls this). The CPU tests
// compile and run this very function (kernels/bindings/ext.cpp includes it; PP_LAUNCH is the fiber emulator there).
#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include "mss_kernel.cuh"

extern "C" cudaError_t polypseg_mss_launch(const void* A, const void* B, void* D, int N, int C, int h, int w, int H,
                                           int W, int num_scales, const float* g3, const float* h3, const float* g5,
                                           const float* h5, int fp16, cudaStream_t stream) {
  using namespace polypseg_mss;
  const Params p{N, C, h, w, H, W, num_scales, g3, h3, g5, h5};
  dim3 grid, block;
  if (!launch_config(p, grid, block)) return cudaErrorInvalidValue;
  if (fp16)
    PP_LAUNCH(mss_kernel<pp_half>, grid, block, stream)(static_cast<const pp_half*>(A), static_cast<const pp_half*>(B),
                                                        static_cast<pp_half*>(D), p);
  else
    PP_LAUNCH(mss_kernel<float>, grid, block, stream)(static_cast<const float*>(A), static_cast<const float*>(B),
                                                      static_cast<float*>(D), p);
  return cudaGetLastError();
}
