// Layer norm and RMS norm kernels: one block per row (grid-stride over rows), each thread running
// the row functions of normalization.cuh, the block merging the threads' partial results.
// Instantiated per storage type and RMS by name expression (e.g. "norm_forward<float, false>").
// Optional pointers (residual, sum, weight, bias, the sum's gradient, the partial rows) are null
// when absent.
#include "normalization.cuh"

namespace {

const unsigned FULL_WARP = 0xffffffffu;

// The block's merged moments, in every thread. blockDim.x is a multiple of 32, at most 1024.
template <bool RMS>
__device__ gk::Moments block_moments(gk::Moments st) {
  __shared__ float warp_n[32], warp_mean[32], warp_m2[32];
  for (int offset = 16; offset > 0; offset >>= 1)
    st = gk::moments_merge<RMS>(st, gk::Moments{__shfl_xor_sync(FULL_WARP, st.n, offset),
                                                __shfl_xor_sync(FULL_WARP, st.mean, offset),
                                                __shfl_xor_sync(FULL_WARP, st.m2, offset)});
  if (threadIdx.x % 32 == 0) {
    warp_n[threadIdx.x / 32] = st.n;
    warp_mean[threadIdx.x / 32] = st.mean;
    warp_m2[threadIdx.x / 32] = st.m2;
  }
  __syncthreads();
  st = gk::moments_empty();
  for (int w = 0; w < int(blockDim.x / 32); ++w)
    st = gk::moments_merge<RMS>(st, gk::Moments{warp_n[w], warp_mean[w], warp_m2[w]});
  __syncthreads();  // the next row overwrites the arrays only once every thread has read them
  return st;
}

__device__ gk::GradSums block_grad_sums(gk::GradSums sums) {
  __shared__ float warp_g[32], warp_gx[32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    sums.g += __shfl_xor_sync(FULL_WARP, sums.g, offset);
    sums.gx += __shfl_xor_sync(FULL_WARP, sums.gx, offset);
  }
  if (threadIdx.x % 32 == 0) {
    warp_g[threadIdx.x / 32] = sums.g;
    warp_gx[threadIdx.x / 32] = sums.gx;
  }
  __syncthreads();
  sums = gk::GradSums{0.0f, 0.0f};
  for (int w = 0; w < int(blockDim.x / 32); ++w) {
    sums.g += warp_g[w];
    sums.gx += warp_gx[w];
  }
  __syncthreads();
  return sums;
}

}  // namespace

// mean may be null (RMS norm); eps as float, as the statistics.
template <class T, bool RMS>
__global__ void __launch_bounds__(1024) norm_forward(const T* x, const T* r, const T* w, const T* b, T* y, T* s,
                                                     float* mean, float* rstd, long long rows, long long cols,
                                                     float eps) {
  // Uniform across the block (a function of the row length and block size), so every thread
  // takes the same path and reaches the same barriers.
  const bool cached = (cols + gk::Vec16<T>::size - 1) / gk::Vec16<T>::size <= (long long)gk::CACHED_CHUNKS * blockDim.x;
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long base = row * cols;
    const T* row_r = r ? r + base : nullptr;
    T* row_s = s ? s + base : nullptr;
    gk::RowCache<T> cache;
    gk::Moments st = cached ? gk::norm_thread_stats_cached<T, RMS>(x + base, row_r, row_s, cols, threadIdx.x, blockDim.x,
                                                                   cache)
                            : gk::norm_thread_stats<T, RMS>(x + base, row_r, row_s, cols, threadIdx.x, blockDim.x);
    st = block_moments<RMS>(st);
    const float inv_std = gk::moments_rstd(st, cols, eps), centre = RMS ? 0.0f : st.mean;
    if (threadIdx.x == 0) {
      rstd[row] = inv_std;
      if (mean) mean[row] = centre;
    }
    if (cached)
      gk::norm_thread_write_cached<T>(cache, w, b, y + base, cols, centre, inv_std, threadIdx.x, blockDim.x);
    else  // longer rows: a second sweep reads the row (or the sum this thread stored) again
      gk::norm_thread_write<T>(r ? row_s : x + base, w, b, y + base, cols, centre, inv_std, threadIdx.x, blockDim.x);
  }
}

// Rows blockIdx.x, + gridDim.x, ...; dw_part/db_part (zeroed, gridDim.x rows of cols) collect
// this block's sums in its own row.
template <class T, bool RMS>
__global__ void __launch_bounds__(1024) norm_backward(const T* dy, const T* ds, const T* x, const T* w,
                                                      const float* mean, const float* rstd, T* dx, float* dw_part,
                                                      float* db_part, long long rows, long long cols) {
  const long long part = blockIdx.x * cols;
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long base = row * cols;
    const float centre = RMS ? 0.0f : mean[row], inv_std = rstd[row];
    gk::GradSums sums = block_grad_sums(gk::grad_thread_sums<T>(dy + base, x + base, w, cols, centre, inv_std,
                                                                threadIdx.x, blockDim.x));
    const float n = cols > 0 ? float(cols) : 1.0f;
    gk::grad_thread_write<T>(dy + base, ds ? ds + base : nullptr, x + base, w, dx + base,
                             dw_part ? dw_part + part : nullptr, db_part ? db_part + part : nullptr, cols, centre,
                             inv_std, RMS ? 0.0f : sums.g / n, sums.gx / n, threadIdx.x, blockDim.x);
  }
}

// out[c] = the sum of part[p, c] over p = 0 .. parts - 1, in that order; four columns a thread.
template <class T>
__global__ void norm_column_sum(const float* part, T* out, long long parts, long long cols) {
  const long long quads = (cols + 3) / 4;
  for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < quads; q += (long long)gridDim.x * blockDim.x)
    gk::column_sum_quad<T>(part, out, parts, cols, 4 * q);
}
