// Recurrent cells, one time step, one element (batch row b, hidden unit j) per call. The
// matmuls (input projection, recurrent product, backward products) are cuBLAS through CuPy;
// these bodies are the whole pointwise cell around them. rnn.cu runs them in a grid-stride
// loop, on the GPU and (built with g++, gpukernels/tools/verify/host.py) in the CPU tests.
//
// Cells (the same codes as the Triton kernels): 0 RNN (tanh, or relu when relu != 0), 1 LSTM
// (gates i f g o, peepholes, coupled f = 1 - i), 2 GRU (r z n, PyTorch's form), 3 and 4 the two
// halves of the original GRU step (3: r, z and m = r*h; 4: n and h' once m @ W_hn is known).
// Workspace rows (fp32): RNN [h], LSTM [i f g o c h], GRU [r z n m h], m = W_hn h + b_hn or r*h.
// Lengths: step t is active for row b when t < lengths[b]; inactive steps keep the state,
// output zero and pass gradients through.
#pragma once
#include "gk_math.cuh"

namespace gk {

GK_HD float rnn_tanh(float x) { return tanhf(x); }

template <int CELL, class T>
GK_HD void rnn_forward_element(long long idx, long long H, int t, const float* gx, long long gx_stride, const float* gh,
                               long long gh_stride, const T* b_hh, const T* peep, const float* h_prev,
                               long long hprev_stride, const float* c_prev, long long cprev_stride,
                               const int* lengths, int relu, int coupled, T* y, float* ws, long long ws_stride) {
  long long b = idx / H, j = idx % H;
  bool active = t < lengths[b];
  const float* x = gx + b * gx_stride + j;  // gate block k of this element: x[k * H]
  const float* r_h = gh + b * gh_stride + j;
  float* w = ws + b * ws_stride + j;
  float hp = h_prev[b * hprev_stride + j];
  float h_new = 0.0f;
  auto pre = [&](int k) { return x[k * H] + r_h[k * H] + to_float(b_hh[k * H + j]); };
  if (CELL == 0) {
    float a = pre(0);
    h_new = relu ? (a < 0.0f ? 0.0f : a) : rnn_tanh(a);
    w[0] = active ? h_new : hp;
  } else if (CELL == 1) {
    float cp = c_prev[b * cprev_stride + j];
    float i = sigmoid(pre(0) + to_float(peep[j]) * cp);
    float f = coupled ? 1.0f - i : sigmoid(pre(1) + to_float(peep[H + j]) * cp);
    float g = rnn_tanh(pre(2));
    float c_new = f * cp + i * g;
    float o = sigmoid(pre(3) + to_float(peep[2 * H + j]) * c_new);
    h_new = o * rnn_tanh(c_new);
    w[0] = i; w[H] = f; w[2 * H] = g; w[3 * H] = o;
    w[4 * H] = active ? c_new : cp;
    w[5 * H] = active ? h_new : hp;
  } else if (CELL == 2) {
    float r = sigmoid(pre(0)), z = sigmoid(pre(1));
    float m = r_h[2 * H] + to_float(b_hh[2 * H + j]);
    float n = rnn_tanh(x[2 * H] + r * m);
    h_new = (1.0f - z) * n + z * hp;
    w[0] = r; w[H] = z; w[2 * H] = n; w[3 * H] = m;
    w[4 * H] = active ? h_new : hp;
  } else if (CELL == 3) {
    float r = sigmoid(pre(0)), z = sigmoid(pre(1));
    w[0] = r; w[H] = z; w[3 * H] = r * hp;
    return;  // no output yet: the n half writes it
  } else {  // CELL 4: gx, gh and b_hh point at the n block
    float n = rnn_tanh(pre(0));
    float z = w[H];
    h_new = (1.0f - z) * n + z * hp;
    w[2 * H] = n;
    w[4 * H] = active ? h_new : hp;
  }
  y[b * H + j] = from_float<T>(active ? h_new : 0.0f);
}

// One step back. dh is the recurrent gradient reaching h' (fp32), gy the output's; writes the
// gate pre-activation gradients of the input projection (dgx) and of the recurrent product
// (dgh; the same array as dgx for RNN and LSTM), the part of dh_prev not through W_hh (dhd)
// and dc_prev (dcp). CELL 3 runs after CELL 4 for the original GRU, with drh = da_n @ W_hn,
// and adds d(r*h) * r to dhd in place.
template <int CELL, class T>
GK_HD void rnn_backward_element(long long idx, long long H, int t, const T* gy, const float* dh, const float* dc,
                                const float* ws, long long ws_stride, const float* h_prev, long long hprev_stride,
                                const float* c_prev, long long cprev_stride, const T* peep, const int* lengths,
                                const float* drh, int relu, int coupled, float* dgx, float* dgh, float* dhd,
                                float* dcp) {
  long long b = idx / H, j = idx % H;
  bool active = t < lengths[b];
  const float* w = ws + b * ws_stride + j;
  const int G = CELL == 1 ? 4 : (CELL == 0 ? 1 : 3);
  long long g0 = b * G * H + j;
  float dh_in = dh[idx];
  float d = dh_in + (active ? to_float(gy[idx]) : 0.0f);
  if (CELL == 0) {
    float h = w[0];
    float da = relu ? (h > 0.0f ? d : 0.0f) : d * ((1.0f - h) * (1.0f + h));
    dgx[g0] = active ? da : 0.0f;
    dhd[idx] = active ? 0.0f : dh_in;
  } else if (CELL == 1) {
    float i = w[0], f = w[H], g = w[2 * H], o = w[3 * H], c_new = w[4 * H];
    float cp = c_prev[b * cprev_stride + j];
    float tc = rnn_tanh(c_new);
    float da_o = d * tc * o * (1.0f - o);
    float dct = dc[idx] + d * o * ((1.0f - tc) * (1.0f + tc)) + da_o * to_float(peep[2 * H + j]);
    float da_g = dct * i * ((1.0f - g) * (1.0f + g));
    float di = coupled ? dct * g - dct * cp : dct * g;  // coupled: f = 1 - i
    float da_f = coupled ? 0.0f : dct * cp * f * (1.0f - f);
    float da_i = di * i * (1.0f - i);
    float dc_prev = dct * f + da_i * to_float(peep[j]) + da_f * to_float(peep[H + j]);
    dgx[g0] = active ? da_i : 0.0f;
    dgx[g0 + H] = active ? da_f : 0.0f;
    dgx[g0 + 2 * H] = active ? da_g : 0.0f;
    dgx[g0 + 3 * H] = active ? da_o : 0.0f;
    dhd[idx] = active ? 0.0f : dh_in;
    dcp[idx] = active ? dc_prev : dc[idx];
  } else if (CELL == 3) {
    float r = w[0], hp = h_prev[b * hprev_stride + j], dr = drh[idx];
    float da_r = active ? dr * hp * r * (1.0f - r) : 0.0f;
    dgx[g0] = da_r;
    dgh[g0] = da_r;
    dhd[idx] = dh_in + (active ? dr * r : 0.0f);  // dh here is dhd of the CELL 4 half
  } else {  // CELL 2, and CELL 4 (the z and n gates of the original GRU)
    float z = w[H], n = w[2 * H], hp = h_prev[b * hprev_stride + j];
    float da_z = active ? d * (hp - n) * z * (1.0f - z) : 0.0f;
    float da_n = active ? d * (1.0f - z) * ((1.0f - n) * (1.0f + n)) : 0.0f;
    dgx[g0 + H] = da_z;
    dgx[g0 + 2 * H] = da_n;
    dgh[g0 + H] = da_z;
    dhd[idx] = active ? d * z : dh_in;
    if (CELL == 2) {
      float r = w[0], m = w[3 * H];
      float da_r = da_n * m * r * (1.0f - r);
      dgx[g0] = da_r;
      dgh[g0] = da_r;
      dgh[g0 + 2 * H] = da_n * r;
    } else {
      dgh[g0 + 2 * H] = da_n;
    }
  }
}

}  // namespace gk
