// GPU launcher of ChannelAttention (C ABI; no TensorRT types). The CPU tests compile and run this very function
// (kernels/bindings/ext.cpp includes it; PP_LAUNCH is the fiber emulator there).
#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include "cam_kernel.cuh"

extern "C" cudaError_t polypseg_cam_launch(const void* x, void* out, int B, int C, int N, float gamma, int fp16,
                                           cudaStream_t stream) {
  using namespace polypseg_cam;
  const Params p{B, C, N, gamma};
  dim3 grid, block;
  if (!launch_config(p, grid, block)) return cudaErrorInvalidValue;
  if (fp16)
    PP_LAUNCH(cam_kernel<pp_half>, grid, block, stream)(static_cast<const pp_half*>(x), static_cast<pp_half*>(out), p);
  else
    PP_LAUNCH(cam_kernel<float>, grid, block, stream)(static_cast<const float*>(x), static_cast<float*>(out), p);
  return cudaGetLastError();
}
