// CUDA's execution model on the CPU, so that g++ compiles the very .cu files of gpukernels/cupy and
// runs their kernels as a GPU launch would: every block of the grid in turn, every thread of a block
// as a fiber (ucontext), __syncthreads() and warp shuffles as barriers between those fibers,
// __shared__ variables as statics (one block runs at a time), atomics as plain read-modify-writes
// (one fiber runs at a time). Sequential, hence deterministic. What the GPU would not run fails the
// launch with a message instead: an invalid launch configuration, threads waiting at different
// barriers, a shuffle that reads a lane outside the block.
//
// Used by gpukernels/tools/verify/host.py, which generates one translation unit per CUDA source:
//   #include "cuda_host.h"
//   #include "activation.cu"
//   GK_KERNEL("activation_forward<gk::Gelu, float>", activation_forward<gk::Gelu, float>)
//   ...
// and exports gk_signature() / gk_launch() (below) to Python through ctypes.
#pragma once

#include <ucontext.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace gk_host {

struct Dim { unsigned x = 1, y = 1, z = 1; };

}  // namespace gk_host

// The built-in variables, set by the scheduler before each fiber runs.
inline gk_host::Dim threadIdx, blockIdx, blockDim, gridDim;

namespace gk_host {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

const int WARP = 32;
const size_t STACK_BYTES = 128 * 1024;  // per thread; the kernels keep a few dozen floats on the stack

struct Fiber {
  ucontext_t context;
  State state = State::Runnable;
  std::unique_ptr<char[]> stack;
};

// The block being run. One launch at a time (gk_launch holds a lock).
struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<unsigned long long> lanes;  // each thread's value in a shuffle
  const std::function<void()>* thread_body = nullptr;
  int current = 0;
  std::string fault;
};

inline Block* block = nullptr;

inline void yield(State state) {
  Fiber& fiber = block->fibers[block->current];
  fiber.state = state;
  swapcontext(&fiber.context, &block->scheduler);
}

inline void fail(const std::string& message) {  // the launch fails; this thread never resumes
  if (block->fault.empty()) block->fault = message;
  yield(State::Done);
}

inline void thread_main() {
  (*block->thread_body)();
  block->fibers[block->current].state = State::Done;
}  // returns to the scheduler through uc_link

inline Dim unflatten(unsigned i, const Dim& d) { return Dim{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)}; }

// Runs every thread of the current block; returns false (with block->fault set) if it cannot finish.
inline bool run_block(unsigned nthreads) {
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& fiber = block->fibers[t];
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.get();
    fiber.context.uc_stack.ss_size = STACK_BYTES;
    fiber.context.uc_link = &block->scheduler;
    makecontext(&fiber.context, thread_main, 0);
    fiber.state = State::Runnable;
  }
  for (;;) {
    for (unsigned t = 0; t < nthreads; ++t) {
      if (block->fibers[t].state != State::Runnable) continue;
      block->current = int(t);
      threadIdx = unflatten(t, blockDim);
      swapcontext(&block->scheduler, &block->fibers[t].context);
      if (!block->fault.empty()) return false;
    }
    // Every thread has finished or waits at a barrier: release the barriers that everyone reached.
    bool all_done = true, all_at_block_barrier = true, released = false;
    for (unsigned t = 0; t < nthreads; ++t) {
      State s = block->fibers[t].state;
      all_done = all_done && s == State::Done;
      all_at_block_barrier = all_at_block_barrier && (s == State::Done || s == State::AtBlockBarrier);
    }
    if (all_done) return true;
    if (all_at_block_barrier) {  // __syncthreads waits for the threads that have not exited
      for (unsigned t = 0; t < nthreads; ++t)
        if (block->fibers[t].state == State::AtBlockBarrier) block->fibers[t].state = State::Runnable;
      continue;
    }
    for (unsigned first = 0; first < nthreads; first += WARP) {
      unsigned last = first + WARP < nthreads ? first + WARP : nthreads;
      bool warp_ready = false, warp_blocked = false;
      for (unsigned t = first; t < last; ++t) {
        State s = block->fibers[t].state;
        warp_ready = warp_ready || s == State::AtWarpBarrier;
        warp_blocked = warp_blocked || s == State::AtBlockBarrier;
      }
      if (!warp_ready || warp_blocked) continue;
      for (unsigned t = first; t < last; ++t)
        if (block->fibers[t].state == State::AtWarpBarrier) block->fibers[t].state = State::Runnable;
      released = true;
    }
    if (!released) {
      block->fault = "deadlock: the threads of a block wait at different barriers";
      return false;
    }
  }
}

// Runs ``thread_body`` for every thread of every block of the grid; returns "" or why it failed.
inline std::string launch(Dim grid, Dim block_dim, const std::function<void()>& thread_body) {
  unsigned long long nthreads = (unsigned long long)block_dim.x * block_dim.y * block_dim.z;
  if (nthreads == 0 || nthreads > 1024 || block_dim.x > 1024 || block_dim.y > 1024 || block_dim.z > 64)
    return "invalid configuration: a block has 1..1024 threads (x, y <= 1024, z <= 64)";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return "invalid configuration: grid x must be in 1..2^31-1, y and z in 1..65535";
  Block state;
  state.fibers.resize(nthreads);
  for (Fiber& fiber : state.fibers) fiber.stack.reset(new char[STACK_BYTES]);
  state.lanes.assign(nthreads, 0);
  state.thread_body = &thread_body;
  block = &state;
  gridDim = grid;
  blockDim = block_dim;
  std::string fault;
  for (unsigned z = 0; z < grid.z && fault.empty(); ++z)
    for (unsigned y = 0; y < grid.y && fault.empty(); ++y)
      for (unsigned x = 0; x < grid.x && fault.empty(); ++x) {
        blockIdx = Dim{x, y, z};
        if (!run_block(unsigned(nthreads))) fault = state.fault;
      }
  block = nullptr;
  return fault;
}

}  // namespace gk_host

// ---- CUDA's device functions, as the kernels of gpukernels/cupy use them ----

inline void __syncthreads() { gk_host::yield(gk_host::State::AtBlockBarrier); }

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffles move at most 8 bytes here");
  gk_host::Block& b = *gk_host::block;
  const int me = b.current, lane = me % gk_host::WARP, source_lane = lane ^ lane_mask;
  const int source = me - lane + source_lane;
  if (source_lane >= gk_host::WARP || source >= int(b.fibers.size()) || !((mask >> lane) & 1u) ||
      !((mask >> source_lane) & 1u)) {
    char message[160];
    std::snprintf(message, sizeof message, "thread %d shuffles with lane %d, which is not an active lane of its warp",
                  me, source_lane);
    gk_host::fail(message);
  }
  unsigned long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  b.lanes[me] = bits;
  gk_host::yield(gk_host::State::AtWarpBarrier);  // every lane has written its value
  bits = b.lanes[source];
  gk_host::yield(gk_host::State::AtWarpBarrier);  // every lane has read before any writes again
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline float atomicAdd(float* address, float value) { float old = *address; *address = old + value; return old; }
inline int atomicMax(int* address, int value) { int old = *address; if (value > old) *address = value; return old; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof i); return i; }

// ---- The kernel registry: name expression -> (parameter types, a launcher from packed arguments) ----

#include "gk_math.cuh"

namespace gk_host {

template <class T> struct always_false : std::false_type {};

// The code of a parameter type, matched in Python against what a launcher packed: scalars by their
// numpy type, pointers by the dtype of the array they receive (a trailing '*').
template <class T>
std::string type_code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U>) return type_code<std::remove_pointer_t<U>>() + "*";
  else if constexpr (std::is_same_v<U, float>) return "float32";
  else if constexpr (std::is_same_v<U, long long>) return "int64";
  else if constexpr (std::is_same_v<U, int>) return "int32";
  else if constexpr (std::is_same_v<U, unsigned char>) return "uint8";
  else if constexpr (std::is_same_v<U, unsigned long long>) return "uint64";
  else if constexpr (std::is_same_v<U, gk::half>) return "float16";
  else if constexpr (std::is_same_v<U, gk::bfloat16>) return "bfloat16";
  else static_assert(always_false<U>::value, "add this parameter type to gk_host::type_code");
}

struct Kernel {
  std::string signature;  // comma-separated type codes
  int arity = 0;
  std::function<void(void* const*)> thread;  // one thread's run, given pointers to the packed arguments
};

template <class A> A unpack(const void* from) { A value; std::memcpy(&value, from, sizeof(A)); return value; }

template <class... A, size_t... I>
void call(void (*kernel)(A...), void* const* args, std::index_sequence<I...>) {
  kernel(unpack<A>(args[I])...);
}

template <class... A>
Kernel make_kernel(void (*kernel)(A...)) {
  Kernel k;
  std::string codes[] = {type_code<A>()..., ""};
  for (size_t i = 0; i < sizeof...(A); ++i) k.signature += (i ? "," : "") + codes[i];
  k.arity = int(sizeof...(A));
  k.thread = [kernel](void* const* args) { call(kernel, args, std::index_sequence_for<A...>{}); };
  return k;
}

inline std::map<std::string, Kernel>& registry() {
  static std::map<std::string, Kernel> kernels;
  return kernels;
}

struct Registration {
  template <class F> Registration(const char* name, F kernel) { registry()[name] = make_kernel(kernel); }
};

}  // namespace gk_host

#define GK_CONCAT2(a, b) a##b
#define GK_CONCAT(a, b) GK_CONCAT2(a, b)
#define GK_KERNEL(name, ...) \
  static const gk_host::Registration GK_CONCAT(gk_registration_, __COUNTER__)(name, &__VA_ARGS__);

// The parameter types of kernel ``name`` ("float32*,int64,..."), or null if no such kernel.
extern "C" const char* gk_signature(const char* name) {
  auto found = gk_host::registry().find(name);
  return found == gk_host::registry().end() ? nullptr : found->second.signature.c_str();
}

// Launches kernel ``name`` on grid[3] x block[3] with ``args`` (nargs pointers to the argument
// values, as cuLaunchKernel takes them). Returns 0, or 1 with the reason in ``error``.
extern "C" int gk_launch(const char* name, const unsigned* grid, const unsigned* block, void* const* args, int nargs,
                         char* error, int error_size) {
  static std::mutex one_launch_at_a_time;
  std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  std::string fault;
  auto found = gk_host::registry().find(name);
  if (found == gk_host::registry().end()) {
    fault = std::string("no kernel ") + name + " in this program";
  } else if (nargs != found->second.arity) {
    fault = "the kernel takes " + std::to_string(found->second.arity) + " arguments, " + std::to_string(nargs) +
            " were given";
  } else {
    const gk_host::Kernel& kernel = found->second;
    fault = gk_host::launch(gk_host::Dim{grid[0], grid[1], grid[2]}, gk_host::Dim{block[0], block[1], block[2]},
                            [&] { kernel.thread(args); });
  }
  if (fault.empty()) return 0;
  std::snprintf(error, size_t(error_size), "%s", fault.c_str());
  return 1;
}
