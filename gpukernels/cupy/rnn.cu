// Recurrent step kernels: a grid-stride loop over the B*H elements of one time step around
// the bodies in rnn.cuh. Instantiated per cell code and storage type by name expression
// (e.g. "rnn_forward_step<1, gk::half>").
#include "rnn.cuh"

template <int CELL, class T>
__global__ void rnn_forward_step(long long n, long long H, int t, const float* gx, long long gx_stride, const float* gh,
                                 long long gh_stride, const T* b_hh, const T* peep, const float* h_prev,
                                 long long hprev_stride, const float* c_prev, long long cprev_stride,
                                 const int* lengths, int relu, int coupled, T* y, float* ws, long long ws_stride) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    gk::rnn_forward_element<CELL, T>(i, H, t, gx, gx_stride, gh, gh_stride, b_hh, peep, h_prev, hprev_stride, c_prev,
                                     cprev_stride, lengths, relu, coupled, y, ws, ws_stride);
}

template <int CELL, class T>
__global__ void rnn_backward_step(long long n, long long H, int t, const T* gy, const float* dh, const float* dc,
                                  const float* ws, long long ws_stride, const float* h_prev, long long hprev_stride,
                                  const float* c_prev, long long cprev_stride, const T* peep, const int* lengths,
                                  const float* drh, int relu, int coupled, float* dgx, float* dgh, float* dhd,
                                  float* dcp) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    gk::rnn_backward_element<CELL, T>(i, H, t, gy, dh, dc, ws, ws_stride, h_prev, hprev_stride, c_prev, cprev_stride,
                                      peep, lengths, drh, relu, coupled, dgx, dgh, dhd, dcp);
}
