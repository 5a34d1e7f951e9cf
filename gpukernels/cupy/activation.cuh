// Activation bodies: one function of a chunk index per kernel. A chunk is 16 bytes of
// elements; a full, aligned chunk moves as one 128-bit load and store, the tail element by
// element. The GPU kernels (activation.cu) and the CPU tests call these same functions.
#pragma once
#include "gk_math.cuh"

namespace gk {

// NaN handling follows PyTorch: relu(NaN) = NaN; relu_backward passes the gradient where x is
// NaN (zero only where x <= 0).
struct Sigmoid {
  static GK_HD float forward(float x, float) { return sigmoid(x); }
  static GK_HD float backward(float dy, float y, float) { return dy * y * (1.0f - y); }
};
struct Tanh {
  static GK_HD float forward(float x, float) { return tanhf(x); }
  static GK_HD float backward(float dy, float y, float) { return dy * ((1.0f - y) * (1.0f + y)); }  // 1 - y*y cancels near |y| = 1
};
struct Relu {
  static GK_HD float forward(float x, float) { return x < 0.0f ? 0.0f : x; }
  static GK_HD float backward(float dy, float x, float) { return x <= 0.0f ? 0.0f : dy; }
};
struct LeakyRelu {
  static GK_HD float forward(float x, float slope) { return x > 0.0f ? x : x * slope; }
  static GK_HD float backward(float dy, float x, float slope) { return x > 0.0f ? dy : dy * slope; }
};
struct Gelu {
  static GK_HD float forward(float x, float) { return x * normal_cdf(x); }
  static GK_HD float backward(float dy, float x, float) {
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return dy * (normal_cdf(x) + x * pdf);
  }
};
struct GeluTanh {
  static GK_HD float forward(float x, float) { return x * gelu_tanh_gate(x); }
  static GK_HD float backward(float dy, float x, float) {  // d/dx [x s] = s + 2 x s (1 - s) du/dx
    float s = gelu_tanh_gate(x);
    float du_dx = 0.79788456080286536f * (1.0f + 0.134145f * x * x);  // 3 * 0.044715
    return dy * (s + 2.0f * x * s * (1.0f - s) * du_dx);
  }
};

template <class Act, class T>
GK_HD void activation_forward_chunk(long long chunk, const T* x, T* y, long long n, float slope) {
  const int V = Vec16<T>::size;
  long long first = chunk * V;
  if (first + V <= n && aligned16(x) && aligned16(y)) {
    Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(x + first), out;
    for (int k = 0; k < V; ++k) out.v[k] = from_float<T>(Act::forward(to_float(in.v[k]), slope));
    *reinterpret_cast<Vec16<T>*>(y + first) = out;
    return;
  }
  for (long long i = first; i < n && i < first + V; ++i) y[i] = from_float<T>(Act::forward(to_float(x[i]), slope));
}

template <class Act, class T>
GK_HD void activation_backward_chunk(long long chunk, const T* dy, const T* saved, T* dx, long long n, float slope) {
  const int V = Vec16<T>::size;
  long long first = chunk * V;
  if (first + V <= n && aligned16(dy) && aligned16(saved) && aligned16(dx)) {
    Vec16<T> g = *reinterpret_cast<const Vec16<T>*>(dy + first), s = *reinterpret_cast<const Vec16<T>*>(saved + first), out;
    for (int k = 0; k < V; ++k) out.v[k] = from_float<T>(Act::backward(to_float(g.v[k]), to_float(s.v[k]), slope));
    *reinterpret_cast<Vec16<T>*>(dx + first) = out;
    return;
  }
  for (long long i = first; i < n && i < first + V; ++i)
    dx[i] = from_float<T>(Act::backward(to_float(dy[i]), to_float(saved[i]), slope));
}

}  // namespace gk
