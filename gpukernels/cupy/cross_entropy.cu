// Cross-entropy kernel: one block per row (grid-stride over rows); each thread runs the row
// functions of cross_entropy.cuh over its columns, the block merges the threads' statistics,
// then (write_grad) the same threads write the row's gradient. Instantiated per storage type and
// KIND by name expression (e.g. "cross_entropy_rows<float, 0>"). Deterministic: the merge order
// is fixed by the thread indices.
#include "cross_entropy.cuh"

namespace {

const unsigned FULL_WARP = 0xffffffffu;

// The block's merged statistics, in every thread. blockDim.x is a multiple of 32, at most 1024.
__device__ gk::CeStats block_merge(gk::CeStats a) {
  __shared__ float warp_m[32], warp_s[32], warp_qx[32], warp_qs[32], warp_xy[32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    gk::CeStats other{gk::RowStats{__shfl_xor_sync(FULL_WARP, a.st.m, offset),
                                   __shfl_xor_sync(FULL_WARP, a.st.s, offset)},
                      __shfl_xor_sync(FULL_WARP, a.qx, offset), __shfl_xor_sync(FULL_WARP, a.qs, offset),
                      __shfl_xor_sync(FULL_WARP, a.xy, offset)};
    a = gk::ce_merge(a, other);
  }
  if (threadIdx.x % 32 == 0) {
    warp_m[threadIdx.x / 32] = a.st.m;
    warp_s[threadIdx.x / 32] = a.st.s;
    warp_qx[threadIdx.x / 32] = a.qx;
    warp_qs[threadIdx.x / 32] = a.qs;
    warp_xy[threadIdx.x / 32] = a.xy;
  }
  __syncthreads();
  a = gk::ce_empty();
  for (int w = 0; w < int(blockDim.x / 32); ++w)
    a = gk::ce_merge(a, gk::CeStats{gk::RowStats{warp_m[w], warp_s[w]}, warp_qx[w], warp_qs[w], warp_xy[w]});
  __syncthreads();  // the next row overwrites the arrays only once every thread has read them
  return a;
}

}  // namespace

// target: class indices (KIND 0, 2; int64 per row) or probabilities (KIND 1; T per element, rows x cols).
// weight (per class) may be null; scale is read at row * scale_stride (0: one value for all rows).
// loss, grad and lse (the row's log-sum-exp, kept for a probability target's gradient) may be null.
template <class T, int KIND>
__global__ void __launch_bounds__(1024) cross_entropy_rows(const T* x, const long long* labels, const T* probs,
                                                           const T* weight, const float* scale, long long scale_stride,
                                                           float* loss, T* grad, float* lse, long long rows,
                                                           long long cols, long long ignore_index, float smoothing,
                                                           float gamma) {
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long base = r * cols;
    const T* row_probs = KIND == 1 ? probs + base : nullptr;
    const long long label = KIND == 1 ? -1 : labels[r];
    gk::CeStats total = block_merge(
        gk::ce_thread_stats<T, KIND>(x + base, row_probs, weight, label, cols, smoothing, threadIdx.x, blockDim.x));
    gk::CeRow row = gk::ce_row<T, KIND>(label, weight, cols, total, ignore_index, smoothing, gamma);
    if (loss && threadIdx.x == 0) loss[r] = row.loss;
    if (lse && threadIdx.x == 0) lse[r] = gk::log_sum_exp(total.st);
    if (grad)
      gk::ce_thread_grad<T, KIND>(x + base, row_probs, weight, grad + base, cols, gk::log_sum_exp(total.st), row,
                                  scale[r * scale_stride], smoothing, threadIdx.x, blockDim.x);
  }
}

// The probability target's gradient, (1 - smoothing) w_k (lse - x_k) scale, one block per row. lse
// is the forward's (one sweep over the row) or null: the block makes it first (two sweeps).
template <class T>
__global__ void __launch_bounds__(1024) cross_entropy_target_grad(const T* x, const float* lse, const T* weight,
                                                                  const float* scale, long long scale_stride, T* grad,
                                                                  long long rows, long long cols, float smoothing) {
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long base = r * cols;
    float row_lse;
    if (lse) {
      row_lse = lse[r];
    } else {  // statistics of a class-index row with no label and no smoothing: the log-sum-exp alone
      row_lse = gk::log_sum_exp(
          block_merge(gk::ce_thread_stats<T, 0>(x + base, nullptr, nullptr, -1, cols, 0.0f, threadIdx.x, blockDim.x))
              .st);
    }
    gk::ce_thread_target_grad<T>(x + base, weight, grad + base, cols, row_lse,
                                 scale[r * scale_stride] * (1.0f - smoothing), threadIdx.x, blockDim.x);
  }
}

// The class weights' gradient, stage 1: thread i of block (bx, by) owns the 16-byte chunk of
// columns bx * blockDim.x + i (neighbouring threads read neighbouring chunks of a row) and sums
// rows [j * rows_per_block, (j + 1) * rows_per_block) into partial[j], j = by (grid-stride over both).
template <class T>
__global__ void __launch_bounds__(1024) cross_entropy_weight_partial(const T* x, const T* probs, const float* lse,
                                                                     const float* scale, long long scale_stride,
                                                                     float* partial, long long rows, long long cols,
                                                                     long long rows_per_block, float smoothing) {
  const long long blocks = (rows + rows_per_block - 1) / rows_per_block;
  const long long chunks = (cols + gk::Vec16<T>::size - 1) / gk::Vec16<T>::size;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long j = blockIdx.y; j < blocks; j += gridDim.y) {
    const long long first = j * rows_per_block;
    const long long last = first + rows_per_block < rows ? first + rows_per_block : rows;
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += stride)
      gk::ce_weight_partial_chunk<T>(x, probs, lse, scale, scale_stride, first, last, cols, c * gk::Vec16<T>::size,
                                     smoothing, partial + j * cols);
  }
}

// Stage 2: thread i owns the chunk of 4 columns blockIdx.x * blockDim.x + i; the partials in block order.
template <class T>
__global__ void __launch_bounds__(1024) cross_entropy_weight_sum(const float* partial, T* out, long long blocks,
                                                                 long long cols) {
  const long long chunks = (cols + 3) / 4;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += stride)
    gk::ce_weight_sum_chunk<T>(partial, out, blocks, cols, c * 4);
}
