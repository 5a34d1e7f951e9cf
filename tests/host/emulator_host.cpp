// Kernels that exercise the CPU model of CUDA launches (gpukernels/tools/verify/cuda_host.h) on
// its own: block and thread indices, shared memory across a barrier, warp shuffles, atomics, and
// barriers the threads of a warp cannot all reach.
#include "cuda_host.h"

const unsigned FULL_WARP = 0xffffffffu;

// out[global thread] = 1000 * block + thread: every (block, thread) pair runs once.
__global__ void indices(int* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = int(1000 * blockIdx.x + threadIdx.x + 1000000 * gridDim.x);
}

// Each block reverses its slice through shared memory: wrong without a working __syncthreads.
__global__ void reverse_in_shared(const float* in, float* out) {
  __shared__ float tile[1024];
  unsigned base = blockIdx.x * blockDim.x;
  tile[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

// Butterfly sum over each warp: every lane ends with its warp's total.
__global__ void warp_sum(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_WARP, v, offset);
  out[threadIdx.x] = v;
}

// One atomic per thread into acc[0] (sum) and acc[1] (max of the bits of non-negative floats).
__global__ void accumulate(const float* in, float* acc) {
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  atomicAdd(acc, v);
  atomicMax(reinterpret_cast<int*>(acc + 1), __float_as_int(v < 0 ? -v : v));
}

// Half a warp waits at the block barrier, the other half at a shuffle: never finishes on a GPU.
__global__ void divergent_barriers(float* out) {
  if (threadIdx.x % 32 < 16) __syncthreads();
  else out[threadIdx.x] = __shfl_xor_sync(0xffff0000u, 1.0f, 1);
}

GK_KERNEL("indices", indices)
GK_KERNEL("reverse_in_shared", reverse_in_shared)
GK_KERNEL("warp_sum", warp_sum)
GK_KERNEL("accumulate", accumulate)
GK_KERNEL("divergent_barriers", divergent_barriers)
