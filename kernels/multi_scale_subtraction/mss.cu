// GPU launcher of MultiScaleSubtraction (C ABI; no TensorRT types: the plugin's enqueue calls this).
#include <cuda_runtime.h>

#include "mss_kernel.cuh"

using namespace polypseg_mss;

extern "C" cudaError_t polypseg_mss_launch(const void* A, const void* B, void* D, int N, int C, int h, int w, int H,
                                           int W, int num_scales, const float* g3, const float* h3, const float* g5,
                                           const float* h5, int fp16, cudaStream_t stream) {
  if (N <= 0 || C <= 0 || h <= 0 || w <= 0 || H <= 0 || W <= 0 || (num_scales != 0 && num_scales != 2))
    return cudaErrorInvalidValue;
  const Params p{N, C, h, w, H, W, num_scales, g3, h3, g5, h5};
  const dim3 block(kTileX, kTileY), grid((W + kTileX - 1) / kTileX, (H + kTileY - 1) / kTileY, N);
  if (fp16)
    mss_kernel<pp_half><<<grid, block, 0, stream>>>(static_cast<const pp_half*>(A), static_cast<const pp_half*>(B),
                                                    static_cast<pp_half*>(D), p);
  else
    mss_kernel<float><<<grid, block, 0, stream>>>(static_cast<const float*>(A), static_cast<const float*>(B),
                                                  static_cast<float*>(D), p);
  return cudaGetLastError();
}
