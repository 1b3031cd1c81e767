// One kernel source, two compilers. Under nvcc the macros are the CUDA keywords. Under a host C++ compiler the
// same kernels become plain functions and the launch macro PP_LAUNCH runs every (block, thread) of a grid on the CPU,
// so the exact kernel source — and the exact launcher code of the .cu files — is executed in tests without a GPU.
// Kernels without __syncthreads (one thread = one output element) run through `emulate_launch` here; kernels that
// synchronise run through the fiber-based scheduler of fiber_emulator.h. Both follow the per-launch schedule of
// pp_emu::schedule() (block and thread order: forward, reverse, alternating or a seeded shuffle), so tests can run
// every launch under several orders and require identical results.
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
// PP_LAUNCH(kernel, grid, block, stream)(args...): a kernel launch (static shared memory only). PP_LAUNCH_NOSYNC is
// the same launch for kernels without __syncthreads (on the CPU they run without fibers, see below).
#define PP_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#define PP_LAUNCH_NOSYNC(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#else
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
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

// The order in which the emulator runs the blocks of a grid and the threads of a block between two barriers.
// A correct kernel gives bit-identical results under every order; a race (a missing barrier, two threads writing one
// element) shows up as a difference between orders, or, for shared memory, as an error of the race checker
// (fiber_emulator.h).
enum class Order : int {
  kAlternate = 0,  // threads forward, then reverse after each barrier, alternating; blocks forward
  kForward = 1,    // threads and blocks in increasing index order
  kReverse = 2,    // threads and blocks in decreasing index order
  kRandom = 3,     // threads shuffled anew in every barrier phase, blocks shuffled (seeded: reproducible)
};
struct Schedule {
  Order order = Order::kAlternate;
  uint64_t seed = 0;
  bool race_check = true;  // report conflicting shared-memory accesses between two barriers (fiber launches)
};
inline Schedule& schedule() {
  static Schedule s;
  return s;
}

inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// order[k] = the index run k-th among n items (threads of a block in barrier phase `phase`, or the blocks of a grid
// for phase = -1), for the current schedule; `salt` distinguishes blocks.
inline void order_of(std::vector<unsigned>& order, unsigned n, long long phase, uint64_t salt) {
  order.resize(n);
  const Schedule& s = schedule();
  bool reverse = false;
  switch (s.order) {
    case Order::kForward: break;
    case Order::kReverse: reverse = true; break;
    case Order::kAlternate: reverse = phase >= 0 && (phase & 1); break;
    case Order::kRandom: {
      for (unsigned i = 0; i < n; ++i) order[i] = i;
      uint64_t state = s.seed * 0x100000001b3ull ^ (salt + 0x51ed27ull) * 0x9e3779b97f4a7c15ull ^
                       static_cast<uint64_t>(phase + 2) * 0xc2b2ae3d27d4eb4full;
      for (unsigned i = n; i > 1; --i) {  // Fisher–Yates
        const unsigned j = static_cast<unsigned>(splitmix64(state) % i);
        const unsigned t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
      }
      return;
    }
  }
  for (unsigned i = 0; i < n; ++i) order[i] = reverse ? n - 1 - i : i;
}
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
// Runs kernel(args...) for every block and thread of the grid, one after the other, in the order of the current
// schedule (pp_emu::schedule()). For kernels without barriers (a barrier outside a fiber launch is an error).
template <class Kernel, class... Args>
void emulate_launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  pp_emu::gridDim = grid;
  pp_emu::blockDim = block;
  const unsigned nblocks = grid.x * grid.y * grid.z, nthreads = block.x * block.y * block.z;
  std::vector<unsigned> border, torder;
  pp_emu::order_of(border, nblocks, -1, 0);
  for (unsigned bk = 0; bk < nblocks; ++bk) {
    const unsigned b = border[bk];
    pp_emu::blockIdx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
    pp_emu::order_of(torder, nthreads, 0, b + 1);
    for (unsigned tk = 0; tk < nthreads; ++tk) {
      const unsigned i = torder[tk];
      pp_emu::threadIdx = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
      kernel(args...);
    }
  }
}

// CUDA runtime stand-ins, so that the .cu launchers compile (and run) on the CPU too.
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

namespace pp_emu {
template <class Kernel>
struct PlainLauncher {
  dim3 grid, block;
  Kernel kernel;
  template <class... Args>
  void operator()(Args... args) const {
    emulate_launch(grid, block, kernel, args...);
  }
};
template <class Kernel>
PlainLauncher<Kernel> plain_launcher(dim3 grid, dim3 block, cudaStream_t, Kernel kernel) {
  return {grid, block, kernel};
}
}  // namespace pp_emu
// kernel<<<grid, block, 0, stream>>>(args...) of a kernel without barriers, executed on the CPU.
#define PP_LAUNCH_NOSYNC(kernel, grid, block, stream) pp_emu::plain_launcher((grid), (block), (stream), kernel)
#endif
