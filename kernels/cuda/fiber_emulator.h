// CPU execution of CUDA kernels that synchronise (__syncthreads) and share memory (__shared__), for tests.
//
// Every CUDA thread of a block becomes a fiber (ucontext) on one OS thread. The scheduler runs the fibers of a
// block one after another up to the next barrier, then starts the next phase; blocks run in sequence. The order of
// the blocks and of the fibers in each phase follows the launch schedule (pp_emu::schedule(), compat.h): forward,
// reverse, alternating forward/reverse from one phase to the next (the default), or a seeded random shuffle, new in
// every phase and block. Tests run each launch under several schedules and require identical results. Three more
// things make synchronisation bugs fail deterministically instead of sometimes:
//   * every access to a shared array goes through a checking proxy: two threads touching one element between two
//     barriers where at least one of them writes (a data race on a GPU), a read of an element no thread of the block
//     has written yet, and an index outside the array are reported as errors when the launch returns
//     (pp_emu::Schedule::race_check, on by default);
//   * shared arrays are poisoned (0xFF bytes: NaN for floats, -1 for ints) at the start of every block, so a read
//     before any write produces garbage rather than the previous block's data (when the checker is off);
//   * divergent barriers (some threads exit or wait at another barrier while others wait) are errors, and so is a
//     barrier in a kernel launched without fibers (emulate_launch / PP_LAUNCH_NOSYNC).
//
// Kernel code uses PP_SHARED(type, name, count) for shared arrays and PP_SYNC() for __syncthreads(), and launchers
// PP_LAUNCH(kernel, grid, block, stream)(args...) for kernel<<<grid, block, 0, stream>>>(args...); under nvcc they
// are the CUDA keywords.
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

constexpr uint32_t kNone = 0xffffffffu, kMany = 0xfffffffeu;

// Per element of a shared array: the last writer and the reader(s), tagged with the barrier phase (epoch).
struct AccessLog {
  std::vector<uint32_t> w_epoch, w_tid, r_epoch, r_tid;
  void reset(std::size_t n) {
    w_epoch.assign(n, 0);
    w_tid.assign(n, kNone);
    r_epoch.assign(n, 0);
    r_tid.assign(n, kNone);
  }
};

struct SharedArray {
  void* ptr;
  std::size_t bytes;
  std::size_t count;
  const char* name;
  AccessLog* log;
};

struct SharedSlot {
  unsigned long gen = 0;
  void* ptr = nullptr;
  AccessLog* log = nullptr;
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
  std::vector<std::unique_ptr<AccessLog>> logs;
  std::function<void()> body;
  int current = -1;
  std::size_t stack_bytes = 128 * 1024;
  uint32_t epoch = 1;        // current barrier phase (unique over the launch)
  uint32_t block_epoch = 1;  // epoch of the first phase of the current block
  bool check = true;
  std::string error;  // first error found inside a fiber (exceptions cannot cross fiber stacks)
  void fail(const std::string& what) {
    if (error.empty()) error = what;
  }
};

inline Scheduler*& sched() {
  static thread_local Scheduler* s = nullptr;
  return s;
}

// The shared array of this launch behind `slot`, allocated (poisoned) on first use in the launch.
inline void* shared_array(std::size_t bytes, std::size_t count, const char* name, SharedSlot& slot) {
  Scheduler* s = sched();
  if (!s) throw std::logic_error("PP_SHARED used outside pp_fiber::launch (launch kernels with barriers or shared "
                                 "memory through PP_LAUNCH)");
  if (slot.gen != s->gen) {
    slot.ptr = ::operator new(bytes);
    std::memset(slot.ptr, 0xFF, bytes);
    s->logs.emplace_back(new AccessLog);
    s->logs.back()->reset(count);
    slot.log = s->logs.back().get();
    s->shared.push_back({slot.ptr, bytes, count, name, slot.log});
    slot.gen = s->gen;
  }
  return slot.ptr;
}

inline std::string where(const char* name, long long i) {
  Scheduler* s = sched();
  return std::string("shared '") + name + "'[" + std::to_string(i) + "] in block (" +
         std::to_string(pp_emu::blockIdx.x) + ", " + std::to_string(pp_emu::blockIdx.y) + ", " +
         std::to_string(pp_emu::blockIdx.z) + "), thread " + std::to_string(s ? s->current : -1);
}

// Record a read (write = false) or write of element i by the current thread; false (and an error) on a conflict.
inline void note_access(AccessLog* log, const char* name, long long i, bool write) {
  Scheduler* s = sched();
  if (!s || !s->check || !log) return;
  const uint32_t t = static_cast<uint32_t>(s->current), e = s->epoch;
  const bool written_now = log->w_epoch[i] == e;
  if (written_now && log->w_tid[i] != t) {
    s->fail(std::string("data race: ") + where(name, i) + (write ? " writes" : " reads") + " an element thread " +
            std::to_string(log->w_tid[i]) + " wrote since the last barrier (missing __syncthreads?)");
    return;
  }
  if (write) {
    if (log->r_epoch[i] == e && log->r_tid[i] != t) {
      s->fail(std::string("data race: ") + where(name, i) + " writes an element " +
              (log->r_tid[i] == kMany ? std::string("other threads") : "thread " + std::to_string(log->r_tid[i])) +
              " read since the last barrier (missing __syncthreads?)");
      return;
    }
    log->w_epoch[i] = e;
    log->w_tid[i] = t;
  } else {
    if (log->w_epoch[i] < s->block_epoch) {
      s->fail("uninitialised read: " + where(name, i) + " reads an element no thread of the block has written");
      return;
    }
    if (log->r_epoch[i] != e) {
      log->r_epoch[i] = e;
      log->r_tid[i] = t;
    } else if (log->r_tid[i] != t) {
      log->r_tid[i] = kMany;
    }
  }
}

// One element of a shared array: reads and writes are recorded for the race checker.
template <class T>
struct SharedRef {
  T* p;
  AccessLog* log;
  const char* name;
  long long i;
  operator T() const {
    note_access(log, name, i, false);
    return p[i];
  }
  SharedRef& operator=(T v) {
    note_access(log, name, i, true);
    p[i] = v;
    return *this;
  }
  SharedRef& operator=(const SharedRef& o) { return *this = static_cast<T>(o); }
  SharedRef& operator+=(T v) { return *this = static_cast<T>(*this) + v; }
  SharedRef& operator-=(T v) { return *this = static_cast<T>(*this) - v; }
  SharedRef& operator*=(T v) { return *this = static_cast<T>(*this) * v; }
  SharedRef& operator/=(T v) { return *this = static_cast<T>(*this) / v; }
};

// A shared array (what PP_SHARED declares on the CPU): indexing is bounds-checked and recorded.
template <class T>
struct SharedPtr {
  T* p;
  AccessLog* log;
  const char* name;
  long long count;
  SharedRef<T> operator[](long long i) const {
    if (i < 0 || i >= count) {
      if (Scheduler* s = sched())
        s->fail("out of bounds: " + where(name, i) + " indexes an array of " + std::to_string(count) + " elements");
      static thread_local T scratch;
      std::memset(&scratch, 0xFF, sizeof(T));
      return {&scratch, nullptr, name, 0};
    }
    return {p, log, name, i};
  }
};

template <class T>
inline SharedPtr<T> shared_ptr(std::size_t count, const char* name, SharedSlot& slot) {
  T* p = static_cast<T*>(shared_array(sizeof(T) * count, count, name, slot));
  return {p, slot.log, name, static_cast<long long>(count)};
}

inline void barrier() {
  Scheduler* s = sched();
  if (!s)
    throw std::logic_error("__syncthreads in a kernel launched without fibers (use PP_LAUNCH, not PP_LAUNCH_NOSYNC)");
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

// Runs kernel(args...) over the grid with real barrier semantics, in the order of the current schedule. Shared
// arrays declared with PP_SHARED live for the launch and are poisoned at the start of every block. Throws
// std::logic_error on a divergent barrier and, when the launch returns, on the first shared-memory error found.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  Scheduler s;
  s.gen = ++generation();
  s.check = pp_emu::schedule().race_check;
  sched() = &s;
  pp_emu::gridDim = grid;
  pp_emu::blockDim = block;
  const unsigned nthreads = block.x * block.y * block.z, nblocks = grid.x * grid.y * grid.z;
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
  std::vector<unsigned> border, torder;
  pp_emu::order_of(border, nblocks, -1, 0);
  for (unsigned bk = 0; bk < nblocks; ++bk) {
    const unsigned b = border[bk];
    pp_emu::blockIdx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
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
    s.block_epoch = ++s.epoch;
    for (long long phase = 0;; ++phase) {
      // one phase: every runnable fiber runs to its next barrier or to its end
      pp_emu::order_of(torder, nthreads, phase, b + 1);
      for (unsigned k = 0; k < nthreads; ++k) {
        const unsigned i = torder[k];
        if (s.state[i] != 0) continue;
        s.current = static_cast<int>(i);
        pp_emu::threadIdx = tid[i];
        swapcontext(&s.main_ctx, &s.ctx[i]);
      }
      unsigned waiting = 0, done = 0;
      for (int st : s.state) (st == 1 ? waiting : done) += (st != 0);
      if (done == nthreads) break;
      if (waiting && done) {
        for (auto& a : s.shared) ::operator delete(a.ptr);
        sched() = nullptr;
        throw std::logic_error("divergent __syncthreads: " + std::to_string(done) + " threads exited while " +
                               std::to_string(waiting) + " wait at a barrier");
      }
      for (int& st : s.state)
        if (st == 1) st = 0;
      ++s.epoch;
    }
  }
  for (auto& a : s.shared) ::operator delete(a.ptr);
  sched() = nullptr;
  if (!s.error.empty()) throw std::logic_error(s.error);
}

// launch() behind the <<<grid, block, 0, stream>>> syntax of PP_LAUNCH.
template <class Kernel>
struct Launcher {
  dim3 grid, block;
  Kernel kernel;
  template <class... Args>
  void operator()(Args... args) const {
    launch(grid, block, kernel, args...);
  }
};
template <class Kernel>
Launcher<Kernel> launcher(dim3 grid, dim3 block, cudaStream_t, Kernel kernel) {
  return {grid, block, kernel};
}

}  // namespace pp_fiber

#define PP_SHARED(type, name, count)                   \
  static thread_local pp_fiber::SharedSlot name##_slot; \
  const pp_fiber::SharedPtr<type> name = pp_fiber::shared_ptr<type>((count), #name, name##_slot)
#define PP_SYNC() pp_fiber::barrier()
#define PP_LAUNCH(kernel, grid, block, stream) pp_fiber::launcher((grid), (block), (stream), kernel)

#else  // nvcc
#define PP_SHARED(type, name, count) __shared__ type name[count]
#define PP_SYNC() __syncthreads()
#endif
