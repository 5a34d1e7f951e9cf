// Block-wide reductions shared by the CUDA kernels (device code; the CPU tests' g++ build gets
// the warp shuffles and barriers from tools/verify/cuda_host.h).
#pragma once

namespace gk {

// The sum of `value` over the block, in every thread, in an order fixed by the block size alone
// (a shuffle tree in each warp, then the warps' sums in warp order): the same bits on every run.
// blockDim.x is a multiple of 32, at most 1024. It ends with a barrier, so the block may call it
// again at once (the next call overwrites the warps' sums only after everyone has read them).
__device__ inline float block_sum(float value) {
  __shared__ float warp_sums[32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  value = 0.0f;
  for (int w = 0; w < int(blockDim.x / 32); ++w) value += warp_sums[w];
  __syncthreads();
  return value;
}

}  // namespace gk
