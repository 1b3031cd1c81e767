// CPU execution of CUDA kernels that synchronise (__syncthreads) and share memory (__shared__), for tests.
//
// Every CUDA thread of a block becomes a fiber (ucontext) on one OS thread. The scheduler runs the fibers of a
// block one after another up to the next barrier, then starts the next phase; blocks run in sequence. Two things
// make synchronisation bugs fail deterministically instead of sometimes:
//   * the order of the fibers alternates between forward and reverse from one barrier phase to the next, so a read
//     of shared memory that lacks a barrier sees either stale data or data from the "wrong" side of the race;
//   * shared arrays are poisoned (0xFF bytes: NaN for floats, -1 for ints) at the start of every block, so a read
//     before any write produces garbage rather than the previous block's data.
// Divergent barriers (some threads exit or wait at another barrier while others wait) are reported as errors.
//
// Kernel code uses PP_SHARED(type, name, count) for shared arrays and PP_SYNC() for __syncthreads(); under nvcc
// they are the CUDA keywords.
#pragma once

#if !defined(__CUDACC__)
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "compat.h"

namespace pp_fiber {

struct SharedArray {
  void* ptr;
  std::size_t bytes;
};

struct SharedSlot {
  unsigned long gen = 0;
  void* ptr = nullptr;
};

inline unsigned long& generation() {
  static unsigned long g = 0;
  return g;
}

struct Scheduler {
  unsigned long gen = 0;
  ucontext_t main_ctx{};
  std::vector<ucontext_t> ctx;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<int> state;  // 0 = runnable, 1 = at barrier, 2 = finished
  std::vector<SharedArray> shared;
  std::function<void()> body;
  int current = -1;
  std::size_t stack_bytes = 128 * 1024;
};

inline Scheduler*& sched() {
  static thread_local Scheduler* s = nullptr;
  return s;
}

// The shared array of this launch behind `slot`, allocated (poisoned) on first use in the launch.
inline void* shared_array(std::size_t bytes, SharedSlot& slot) {
  Scheduler* s = sched();
  if (!s) throw std::logic_error("PP_SHARED used outside pp_fiber::launch");
  if (slot.gen != s->gen) {
    slot.ptr = ::operator new(bytes);
    std::memset(slot.ptr, 0xFF, bytes);
    s->shared.push_back({slot.ptr, bytes});
    slot.gen = s->gen;
  }
  return slot.ptr;
}

inline void barrier() {
  Scheduler* s = sched();
  if (!s) return;  // plain emulation (no fibers): a barrier is a no-op only when a block has one thread
  s->state[s->current] = 1;
  swapcontext(&s->ctx[s->current], &s->main_ctx);
}

inline void fiber_entry(unsigned lo, unsigned hi) {
  const uintptr_t p = (static_cast<uintptr_t>(hi) << 32) | lo;
  Scheduler* s = reinterpret_cast<Scheduler*>(p);
  s->body();
  s->state[s->current] = 2;
  swapcontext(&s->ctx[s->current], &s->main_ctx);
}

// Runs kernel(args...) over the grid with real barrier semantics. Shared arrays declared with PP_SHARED live for
// the launch and are poisoned at the start of every block.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  Scheduler s;
  s.gen = ++generation();
  sched() = &s;
  pp_emu::gridDim = grid;
  pp_emu::blockDim = block;
  const unsigned nthreads = block.x * block.y * block.z;
  s.ctx.resize(nthreads);
  s.state.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) s.stacks.emplace_back(new char[s.stack_bytes]);
  std::vector<dim3> tid(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) tid[i] = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
  s.body = [&] {
    pp_emu::threadIdx = tid[s.current];
    kernel(args...);
  };
  const uintptr_t p = reinterpret_cast<uintptr_t>(&s);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        pp_emu::blockIdx = dim3(bx, by, bz);
        for (auto& a : s.shared) std::memset(a.ptr, 0xFF, a.bytes);
        for (unsigned i = 0; i < nthreads; ++i) {
          getcontext(&s.ctx[i]);
          s.ctx[i].uc_stack.ss_sp = s.stacks[i].get();
          s.ctx[i].uc_stack.ss_size = s.stack_bytes;
          s.ctx[i].uc_link = &s.main_ctx;
          makecontext(&s.ctx[i], reinterpret_cast<void (*)()>(fiber_entry), 2, static_cast<unsigned>(p & 0xffffffffu),
                      static_cast<unsigned>(p >> 32));
          s.state[i] = 0;
        }
        bool reverse = false;
        for (;;) {
          // one phase: every runnable fiber runs to its next barrier or to its end
          for (unsigned k = 0; k < nthreads; ++k) {
            const unsigned i = reverse ? nthreads - 1 - k : k;
            if (s.state[i] != 0) continue;
            s.current = static_cast<int>(i);
            pp_emu::threadIdx = tid[i];
            swapcontext(&s.main_ctx, &s.ctx[i]);
          }
          unsigned waiting = 0, done = 0;
          for (int st : s.state) (st == 1 ? waiting : done) += (st != 0);
          if (done == nthreads) break;
          if (waiting && done) {
            sched() = nullptr;
            throw std::logic_error("divergent __syncthreads: " + std::to_string(done) + " threads exited while " +
                                   std::to_string(waiting) + " wait at a barrier");
          }
          for (int& st : s.state)
            if (st == 1) st = 0;
          reverse = !reverse;
        }
      }
  for (auto& a : s.shared) ::operator delete(a.ptr);
  sched() = nullptr;
}

}  // namespace pp_fiber

#define PP_SHARED(type, name, count)                   \
  static thread_local pp_fiber::SharedSlot name##_slot; \
  type* name = static_cast<type*>(pp_fiber::shared_array(sizeof(type) * (count), name##_slot))
#define PP_SYNC() pp_fiber::barrier()

#else  // nvcc
#define PP_SHARED(type, name, count) __shared__ type name[count]
#define PP_SYNC() __syncthreads()
#endif
