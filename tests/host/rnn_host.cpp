// CPU harness for rnn.cuh: the grid-stride loops of rnn.cu as plain loops over the elements
// of one step, calling the same bodies the GPU kernels call. dtype: 0 float32, 1 float16,
// 2 bfloat16; cell: the codes of gpukernels.cupy.rnn.
#include "rnn.cuh"

namespace {

template <int CELL, class T>
void forward(long long n, long long H, int t, const float* gx, long long gx_stride, const float* gh,
             long long gh_stride, const void* b_hh, const void* peep, const float* h_prev, long long hprev_stride,
             const float* c_prev, long long cprev_stride, const int* lengths, int relu, int coupled, void* y,
             float* ws, long long ws_stride) {
  for (long long i = 0; i < n; ++i)
    gk::rnn_forward_element<CELL, T>(i, H, t, gx, gx_stride, gh, gh_stride, (const T*)b_hh, (const T*)peep, h_prev,
                                     hprev_stride, c_prev, cprev_stride, lengths, relu, coupled, (T*)y, ws, ws_stride);
}

template <int CELL, class T>
void backward(long long n, long long H, int t, const void* gy, const float* dh, const float* dc, const float* ws,
              long long ws_stride, const float* h_prev, long long hprev_stride, const float* c_prev,
              long long cprev_stride, const void* peep, const int* lengths, const float* drh, int relu, int coupled,
              float* dgx, float* dgh, float* dhd, float* dcp) {
  for (long long i = 0; i < n; ++i)
    gk::rnn_backward_element<CELL, T>(i, H, t, (const T*)gy, dh, dc, ws, ws_stride, h_prev, hprev_stride, c_prev,
                                      cprev_stride, (const T*)peep, lengths, drh, relu, coupled, dgx, dgh, dhd, dcp);
}

// The (cell, dtype) instantiation of a template function, as a table of pointers.
#define GK_TABLE(fn, T) {fn<0, T>, fn<1, T>, fn<2, T>, fn<3, T>, fn<4, T>}

}  // namespace

extern "C" int gk_rnn_forward_step(int cell, int dtype, long long n, long long H, int t, const float* gx,
                                   long long gx_stride, const float* gh, long long gh_stride, const void* b_hh,
                                   const void* peep, const float* h_prev, long long hprev_stride, const float* c_prev,
                                   long long cprev_stride, const int* lengths, int relu, int coupled, void* y,
                                   float* ws, long long ws_stride) {
  typedef decltype(&forward<0, float>) Fn;
  static const Fn table[3][5] = {GK_TABLE(forward, float), GK_TABLE(forward, gk::half),
                                 GK_TABLE(forward, gk::bfloat16)};
  if (cell < 0 || cell > 4 || dtype < 0 || dtype > 2) return 1;
  table[dtype][cell](n, H, t, gx, gx_stride, gh, gh_stride, b_hh, peep, h_prev, hprev_stride, c_prev, cprev_stride,
                     lengths, relu, coupled, y, ws, ws_stride);
  return 0;
}

extern "C" int gk_rnn_backward_step(int cell, int dtype, long long n, long long H, int t, const void* gy,
                                    const float* dh, const float* dc, const float* ws, long long ws_stride,
                                    const float* h_prev, long long hprev_stride, const float* c_prev,
                                    long long cprev_stride, const void* peep, const int* lengths, const float* drh,
                                    int relu, int coupled, float* dgx, float* dgh, float* dhd, float* dcp) {
  typedef decltype(&backward<0, float>) Fn;
  static const Fn table[3][5] = {GK_TABLE(backward, float), GK_TABLE(backward, gk::half),
                                 GK_TABLE(backward, gk::bfloat16)};
  if (cell < 0 || cell > 4 || dtype < 0 || dtype > 2) return 1;
  table[dtype][cell](n, H, t, gy, dh, dc, ws, ws_stride, h_prev, hprev_stride, c_prev, cprev_stride, peep, lengths,
                     drh, relu, coupled, dgx, dgh, dhd, dcp);
  return 0;
}
