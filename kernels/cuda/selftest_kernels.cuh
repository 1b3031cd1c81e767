// Kernels that exercise the CPU emulator itself (tests only): a shared-memory block reduction, correct and with a
// missing barrier, which the fiber scheduler must catch deterministically; a global-memory race; an out-of-bounds
// shared index; a divergent barrier.
#pragma once
#include "compat.h"
#include "fiber_emulator.h"

namespace polypseg_selftest {

template <bool kFirstBarrier>
PP_GLOBAL void block_sum_kernel(const float* in, float* out, int n) {
  PP_SHARED(float, buf, 1024);
  const int t = static_cast<int>(threadIdx.x);
  const int i = static_cast<int>(blockIdx.x * blockDim.x) + t;
  buf[t] = i < n ? in[i] : 0.f;
  if (kFirstBarrier) PP_SYNC();  // without it, a thread may read a neighbour's slot before it is written
  for (int s = static_cast<int>(blockDim.x) / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    PP_SYNC();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Every thread of the grid writes its index to out[0]: a race between threads and blocks on global memory, which
// only shows as results that differ between launch schedules.
PP_GLOBAL void last_writer_kernel(int* out) {
  out[0] = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
}

// Writes one element past the end of a shared array (thread 32 of 33): the emulator reports it.
PP_GLOBAL void shared_out_of_bounds_kernel(float* out) {
  PP_SHARED(float, buf, 32);
  const int t = static_cast<int>(threadIdx.x);
  buf[t] = 1.f;
  PP_SYNC();
  out[t] = buf[t];
}

// A barrier inside a branch that not all threads take: undefined behaviour on a GPU, an error in the emulator.
PP_GLOBAL void divergent_barrier_kernel(float* out) {
  if (threadIdx.x == 0) return;
  PP_SYNC();
  out[threadIdx.x] = 1.f;
}

}  // namespace polypseg_selftest
