// Dense-layer kernels around cuBLAS's products (linear.cuh holds the bodies). Instantiated by
// name expression, e.g. "linear_forward_epilogue<gk::Gelu, gk::bfloat16, true>".
#include "linear.cuh"

// y = act(z + bias) (and d = act'(z + bias) with SAVE): a grid-stride loop over the elements.
// bias may be null.
template <class Act, class T, bool SAVE>
__global__ void linear_forward_epilogue(const float* z, const T* bias, T* y, T* d, long long n_rows, long long n_cols,
                                        float slope) {
  const long long n = n_rows * n_cols;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    gk::linear_epilogue_element<Act, T, SAVE>(i, z, bias, y, d, n_cols, slope);
}

// dz = dy * act'(z) into fp32 dz, and (db not null) db = the column sums of dz. A block of
// LINEAR_COLS x LINEAR_ROW_THREADS threads takes LINEAR_COLS columns (adjacent threads, adjacent
// columns: coalesced); each thread sums its share of the rows in order, then thread row 0 adds
// the shares in thread order: the same bits on every run, no atomics.
const int LINEAR_COLS = 32;
const int LINEAR_ROW_THREADS = 8;

template <class Act, class T, int SAVED>
__global__ void __launch_bounds__(256) linear_backward_epilogue(const T* dy, const T* saved, float* dz, T* db,
                                                                long long n_rows, long long n_cols, float slope) {
  __shared__ float share[LINEAR_ROW_THREADS][LINEAR_COLS];
  for (long long first = blockIdx.x * (long long)LINEAR_COLS; first < n_cols; first += (long long)gridDim.x * LINEAR_COLS) {
    const long long col = first + threadIdx.x;
    float total = 0.0f;
    if (col < n_cols)
      total = gk::linear_grad_column<Act, T, SAVED>(col, threadIdx.y, LINEAR_ROW_THREADS, dy, saved, dz, n_rows, n_cols,
                                                    slope);
    share[threadIdx.y][threadIdx.x] = total;
    __syncthreads();
    if (db && threadIdx.y == 0 && col < n_cols) {
      float sum = 0.0f;
      for (int r = 0; r < LINEAR_ROW_THREADS; ++r) sum += share[r][threadIdx.x];
      db[col] = gk::from_float<T>(sum);
    }
    __syncthreads();  // the next columns overwrite share only once it has been read
  }
}
