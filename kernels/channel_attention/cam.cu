// GPU launcher of ChannelAttention (C ABI; no TensorRT types).
#include <cuda_runtime.h>

#include "cam_kernel.cuh"

using namespace polypseg_cam;

extern "C" cudaError_t polypseg_cam_launch(const void* x, void* out, int B, int C, int N, float gamma, int fp16,
                                           cudaStream_t stream) {
  if (B <= 0 || C <= 0 || N <= 0 || C > kMaxC) return cudaErrorInvalidValue;
  const Params p{B, C, N, gamma};
  const dim3 block(kThreads), grid(C, B);
  if (fp16)
    cam_kernel<pp_half><<<grid, block, 0, stream>>>(static_cast<const pp_half*>(x), static_cast<pp_half*>(out), p);
  else
    cam_kernel<float><<<grid, block, 0, stream>>>(static_cast<const float*>(x), static_cast<float*>(out), p);
  return cudaGetLastError();
}
