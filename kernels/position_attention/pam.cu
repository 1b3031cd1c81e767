// GPU launcher of PositionAttention (C ABI; no TensorRT types).
#include <cuda_runtime.h>

#include "pam_kernel.cuh"

using namespace polypseg_pam;

extern "C" cudaError_t polypseg_pam_launch(const void* q, const void* k, const void* v, const void* x, void* out,
                                           int B, int C, int D, int N, float gamma, int fp16, cudaStream_t stream) {
  if (B <= 0 || C <= 0 || N <= 0 || D <= 0 || D > kMaxD) return cudaErrorInvalidValue;
  const Params p{B, C, D, N, gamma};
  const dim3 block(kQ), grid((N + kQ - 1) / kQ, B);
  if (fp16)
    pam_kernel<pp_half><<<grid, block, 0, stream>>>(static_cast<const pp_half*>(q), static_cast<const pp_half*>(k),
                                                    static_cast<const pp_half*>(v), static_cast<const pp_half*>(x),
                                                    static_cast<pp_half*>(out), p);
  else
    pam_kernel<float><<<grid, block, 0, stream>>>(static_cast<const float*>(q), static_cast<const float*>(k),
                                                  static_cast<const float*>(v), static_cast<const float*>(x),
                                                  static_cast<float*>(out), p);
  return cudaGetLastError();
}
