// Dense-layer bodies around cuBLAS's products: the forward epilogue (bias + activation, and the
// saved derivative) as a function of the element index, and the backward's dz = dy * act'(z)
// with the bias gradient as a function of a column and a thread's share of its rows. The
// activation math is activation.cuh's (Act::forward, Act::backward). linear.cu loops over them;
// the CPU tests run linear.cu itself.
#pragma once
#include "activation.cuh"

namespace gk {

// No activation: y = z. (Its backward is never called: dz = dy, SAVED_NONE.)
struct Identity {
  static GK_HD float forward(float x, float) { return x; }
  static GK_HD float backward(float dy, float, float) { return dy; }
};

// What the backward reads besides dy (reference/linear.py's saved_kind).
const int SAVED_NONE = 0;        // no activation
const int SAVED_OUTPUT = 1;      // y, from which Act::backward gives the derivative
const int SAVED_DERIVATIVE = 2;  // act'(z) itself

// Element i of the (M, N) output: z (fp32, from cuBLAS) + bias, the activation, and with SAVE
// the derivative act'(z) = Act::backward(1, z).
template <class Act, class T, bool SAVE>
GK_HD void linear_epilogue_element(long long i, const float* z, const T* bias, T* y, T* d, long long n_cols,
                                   float slope) {
  float v = z[i];
  if (bias) v += to_float(bias[i % n_cols]);
  y[i] = from_float<T>(Act::forward(v, slope));
  if (SAVE) d[i] = from_float<T>(Act::backward(1.0f, v, slope));
}

template <class Act, int SAVED>
GK_HD float grad_preactivation(float dy, float saved, float slope) {
  if (SAVED == SAVED_NONE) return dy;
  if (SAVED == SAVED_OUTPUT) return Act::backward(dy, saved, slope);
  return dy * saved;
}

// dz (fp32, for cuBLAS) of column `col` at rows first, first + step, ...; returns their sum,
// added in row order (the bias gradient's share of this thread: deterministic).
template <class Act, class T, int SAVED>
GK_HD float linear_grad_column(long long col, long long first, long long step, const T* dy, const T* saved,
                               float* dz, long long n_rows, long long n_cols, float slope) {
  float total = 0.0f;
  for (long long r = first; r < n_rows; r += step) {
    long long i = r * n_cols + col;
    float g = grad_preactivation<Act, SAVED>(to_float(dy[i]), SAVED == SAVED_NONE ? 0.0f : to_float(saved[i]), slope);
    dz[i] = g;
    total += g;
  }
  return total;
}

}  // namespace gk
