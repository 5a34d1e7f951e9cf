// Softmax kernels: one block per row (grid-stride over rows), each thread running the row
// functions of softmax.cuh on its chunks, the block merging the threads' partial results.
// Instantiated per storage type and LOG by name expression (e.g. "softmax_forward<float, true>").
#include "gk_block.cuh"
#include "softmax.cuh"

namespace {

const unsigned FULL_WARP = 0xffffffffu;

// The block's merged stats, in every thread. blockDim.x is a multiple of 32, at most 1024.
__device__ gk::RowStats block_merge(gk::RowStats st) {
  __shared__ float warp_m[32], warp_s[32];
  for (int offset = 16; offset > 0; offset >>= 1)
    st = gk::stats_merge(st, gk::RowStats{__shfl_xor_sync(FULL_WARP, st.m, offset),
                                          __shfl_xor_sync(FULL_WARP, st.s, offset)});
  if (threadIdx.x % 32 == 0) {
    warp_m[threadIdx.x / 32] = st.m;
    warp_s[threadIdx.x / 32] = st.s;
  }
  __syncthreads();
  st = gk::stats_empty();
  for (int w = 0; w < int(blockDim.x / 32); ++w) st = gk::stats_merge(st, gk::RowStats{warp_m[w], warp_s[w]});
  __syncthreads();  // the next row overwrites warp_m/warp_s only once every thread has read them
  return st;
}

}  // namespace

// keep (a byte per element) and lengths (one per row) may be null; masked != 0 for masked
// softmax, whose fully masked rows are zeros.
// At most 1024 threads (threads_for in softmax.py): the bound keeps ptxas under 64 registers, so
// a full block always launches.
template <class T, bool LOG>
__global__ void __launch_bounds__(1024) softmax_forward(const T* x, const unsigned char* keep, const long long* lengths, T* y, long long rows,
                                long long cols, int masked) {
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long base = r * cols;
    const unsigned char* keep_row = keep ? keep + base : nullptr;
    const long long limit = lengths ? lengths[r] : cols;
    gk::RowStats st = gk::softmax_thread_stats<T>(x + base, keep_row, limit, cols, threadIdx.x, blockDim.x);
    st = block_merge(st);
    gk::softmax_thread_write<T, LOG>(x + base, keep_row, limit, y + base, cols, st, masked != 0, threadIdx.x,
                                     blockDim.x);
  }
}

template <class T, bool LOG>
__global__ void __launch_bounds__(1024) softmax_backward(const T* dy, const T* y, T* dx, long long rows, long long cols) {
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long base = r * cols;
    float total =
        gk::block_sum(gk::softmax_thread_grad_sum<T, LOG>(dy + base, y + base, cols, threadIdx.x, blockDim.x));
    gk::softmax_thread_grad_write<T, LOG>(dy + base, y + base, dx + base, cols, total, threadIdx.x, blockDim.x);
  }
}
