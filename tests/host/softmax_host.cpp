// CPU harness for softmax.cuh: softmax.cu's row-per-block kernels with the block simulated,
// every thread's row functions run in turn and their partial results merged as the block does
// (per warp, then across warps), so the CPU runs the very row code the GPU runs.
#include "softmax.cuh"

namespace {

gk::RowStats merge_block(const gk::RowStats* partial, int nthreads) {
  gk::RowStats block = gk::stats_empty();
  for (int warp = 0; warp < nthreads / 32; ++warp) {
    gk::RowStats st = gk::stats_empty();
    for (int lane = 0; lane < 32; ++lane) st = gk::stats_merge(st, partial[warp * 32 + lane]);
    block = gk::stats_merge(block, st);
  }
  return block;
}

template <class T, bool LOG>
void forward(const void* x_, const unsigned char* keep, const long long* lengths, void* y_, long long rows,
             long long cols, int masked, int nthreads) {
  const T* x = static_cast<const T*>(x_);
  T* y = static_cast<T*>(y_);
  gk::RowStats partial[1024];
  for (long long r = 0; r < rows; ++r) {
    const long long base = r * cols;
    const unsigned char* keep_row = keep ? keep + base : nullptr;
    const long long limit = lengths ? lengths[r] : cols;
    for (int t = 0; t < nthreads; ++t) partial[t] = gk::softmax_thread_stats<T>(x + base, keep_row, limit, cols, t, nthreads);
    gk::RowStats st = merge_block(partial, nthreads);
    for (int t = 0; t < nthreads; ++t)
      gk::softmax_thread_write<T, LOG>(x + base, keep_row, limit, y + base, cols, st, masked != 0, t, nthreads);
  }
}

template <class T, bool LOG>
void backward(const void* dy_, const void* y_, void* dx_, long long rows, long long cols, int nthreads) {
  const T* dy = static_cast<const T*>(dy_);
  const T* y = static_cast<const T*>(y_);
  T* dx = static_cast<T*>(dx_);
  for (long long r = 0; r < rows; ++r) {
    const long long base = r * cols;
    float total = 0.0f;
    for (int t = 0; t < nthreads; ++t) total += gk::softmax_thread_grad_sum<T, LOG>(dy + base, y + base, cols, t, nthreads);
    for (int t = 0; t < nthreads; ++t)
      gk::softmax_thread_grad_write<T, LOG>(dy + base, y + base, dx + base, cols, total, t, nthreads);
  }
}

bool valid_threads(int nthreads) { return nthreads >= 32 && nthreads <= 1024 && nthreads % 32 == 0; }

}  // namespace

// dtype: 0 float32, 1 float16, 2 bfloat16. keep and lengths may be null. Returns 0 on success.
extern "C" int gk_softmax_forward(int dtype, int log, const void* x, const unsigned char* keep, const long long* lengths,
                                  void* y, long long rows, long long cols, int masked, int nthreads) {
  if (!valid_threads(nthreads)) return 2;
  switch (dtype * 2 + (log ? 1 : 0)) {
    case 0: forward<float, false>(x, keep, lengths, y, rows, cols, masked, nthreads); return 0;
    case 1: forward<float, true>(x, keep, lengths, y, rows, cols, masked, nthreads); return 0;
    case 2: forward<gk::half, false>(x, keep, lengths, y, rows, cols, masked, nthreads); return 0;
    case 3: forward<gk::half, true>(x, keep, lengths, y, rows, cols, masked, nthreads); return 0;
    case 4: forward<gk::bfloat16, false>(x, keep, lengths, y, rows, cols, masked, nthreads); return 0;
    case 5: forward<gk::bfloat16, true>(x, keep, lengths, y, rows, cols, masked, nthreads); return 0;
  }
  return 1;
}

extern "C" int gk_softmax_backward(int dtype, int log, const void* dy, const void* y, void* dx, long long rows,
                                   long long cols, int nthreads) {
  if (!valid_threads(nthreads)) return 2;
  switch (dtype * 2 + (log ? 1 : 0)) {
    case 0: backward<float, false>(dy, y, dx, rows, cols, nthreads); return 0;
    case 1: backward<float, true>(dy, y, dx, rows, cols, nthreads); return 0;
    case 2: backward<gk::half, false>(dy, y, dx, rows, cols, nthreads); return 0;
    case 3: backward<gk::half, true>(dy, y, dx, rows, cols, nthreads); return 0;
    case 4: backward<gk::bfloat16, false>(dy, y, dx, rows, cols, nthreads); return 0;
    case 5: backward<gk::bfloat16, true>(dy, y, dx, rows, cols, nthreads); return 0;
  }
  return 1;
}
