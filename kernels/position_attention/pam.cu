// GPU launcher of PositionAttention (C ABI; no TensorRT types). The CPU tests compile and run this very function
// (kernels/bindings/ext.cpp includes it; PP_LAUNCH is the fiber emulator there).
#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include "pam_kernel.cuh"

extern "C" cudaError_t polypseg_pam_launch(const void* q, const void* k, const void* v, const void* x, void* out,
                                           int B, int C, int D, int N, float gamma, int fp16, cudaStream_t stream) {
  using namespace polypseg_pam;
  const Params p{B, C, D, N, gamma};
  dim3 grid, block;
  if (!launch_config(p, grid, block)) return cudaErrorInvalidValue;
  if (fp16)
    PP_LAUNCH(pam_kernel<pp_half>, grid, block, stream)(static_cast<const pp_half*>(q), static_cast<const pp_half*>(k),
                                                        static_cast<const pp_half*>(v), static_cast<const pp_half*>(x),
                                                        static_cast<pp_half*>(out), p);
  else
    PP_LAUNCH(pam_kernel<float>, grid, block, stream)(static_cast<const float*>(q), static_cast<const float*>(k),
                                                      static_cast<const float*>(v), static_cast<const float*>(x),
                                                      static_cast<float*>(out), p);
  return cudaGetLastError();
}
