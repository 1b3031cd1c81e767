// One kernel source, two compilers. Under nvcc the macros are the CUDA keywords. Under a host C++ compiler the
// same kernels become plain functions and `emulate_launch` runs every (block, thread) of a grid on the CPU, so the
// exact kernel source is executed in tests without a GPU. This header supports kernels without __syncthreads
// (one thread = one output element); kernels that synchronise use the fiber-based scheduler of the plugin kernels.
#pragma once

#if defined(__CUDACC__)
#define PP_GLOBAL __global__
#define PP_DEVICE __device__
#define PP_HD __host__ __device__
#define PP_RESTRICT __restrict__
#include <cuda_fp16.h>
using pp_half = __half;
__device__ inline float pp_to_float(float v) { return v; }
__device__ inline float pp_to_float(__half v) { return __half2float(v); }
template <class T>
__device__ inline T pp_from_float(float v);
template <>
__device__ inline float pp_from_float<float>(float v) { return v; }
template <>
__device__ inline __half pp_from_float<__half>(float v) { return __float2half_rn(v); }
#else
#include <cstdint>
#include <cstring>
#define PP_GLOBAL
#define PP_DEVICE
#define PP_HD
#define PP_RESTRICT
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
namespace pp_emu {
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
}  // namespace pp_emu
using pp_emu::blockDim;
using pp_emu::blockIdx;
using pp_emu::gridDim;
using pp_emu::threadIdx;
// sequential emulation: atomics are plain read-modify-write
template <class T>
inline T atomicAdd(T* addr, T v) {
  T old = *addr;
  *addr = old + v;
  return old;
}
namespace polypseg {
uint16_t float_to_half(float f);  // kernels/src/hotpath.cpp: IEEE round to nearest even
}
// float16 storage on the CPU: converts like __half(float) does on the GPU (round to nearest even).
struct pp_half {
  uint16_t bits;
  pp_half() = default;
  explicit pp_half(float f) : bits(polypseg::float_to_half(f)) {}
};
inline float pp_half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float pp_to_float(float v) { return v; }
inline float pp_to_float(pp_half v) { return pp_half_bits_to_float(v.bits); }
template <class T>
inline T pp_from_float(float v) { return T(v); }
// Runs kernel(args...) for every block and thread of the grid, in order.
template <class Kernel, class... Args>
void emulate_launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  pp_emu::gridDim = grid;
  pp_emu::blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        pp_emu::blockIdx = dim3(bx, by, bz);
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              pp_emu::threadIdx = dim3(tx, ty, tz);
              kernel(args...);
            }
      }
}
#endif
