// Elementwise loss math: one struct per loss with the per-element loss and its gradients for
// the input and the target (fp32, for a unit upstream gradient, before `weight`), and the chunk
// bodies the kernels of loss.cu run for each 16-byte chunk index. The GPU kernels and the CPU
// tests call these same functions. Formulas: gpukernels/reference/loss.py.
#pragma once
#include "gk_math.cuh"

namespace gk {

GK_HD float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

// (1 - t) x + (1 + (pw - 1) t) softplus(-x) as a sum of terms >= 0 for t in [0, 1]: the plain
// form cancels for x < 0.
GK_HD float bce_with_logits(float x, float t, float pw) {
  float linear = x >= 0.0f ? (1.0f - t) * x : -(pw * t) * x;
  return linear + (1.0f + (pw - 1.0f) * t) * log1pf(expf(-fabsf(x)));
}

// sigmoid(x) and 1 - sigmoid(x), each without cancellation.
GK_HD void sigmoid_pair(float x, float& p, float& q) {
  float e = expf(-fabsf(x)), big = 1.0f / (1.0f + e), small = e * big;
  p = x >= 0.0f ? big : small;
  q = x >= 0.0f ? small : big;
}

// m^gamma for m >= 0 as torch's pow: exact for gamma 2 and 1, 1 for gamma 0 (even at m = 0).
GK_HD float focal_power(float m, float gamma) {
  if (gamma == 2.0f) return m * m;
  if (gamma == 1.0f) return m;
  if (gamma == 0.0f) return 1.0f;
  return powf(m, gamma);
}

struct Mse {
  static GK_HD float loss(float x, float t, float, float, float) { float d = x - t; return d * d; }
  static GK_HD float grad_input(float x, float t, float, float, float) { return 2.0f * (x - t); }
  static GK_HD float grad_target(float x, float t, float, float, float) { return -2.0f * (x - t); }
};

GK_HD float sign_of(float d) { return d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : d * 0.0f); }  // NaN stays NaN

struct L1 {
  static GK_HD float loss(float x, float t, float, float, float) { return fabsf(x - t); }
  static GK_HD float grad_input(float x, float t, float, float, float) { return sign_of(x - t); }
  static GK_HD float grad_target(float x, float t, float, float, float) { return -sign_of(x - t); }
};

// c = min(|d|, delta): c (|d| - c / 2) is d^2 / 2 inside and delta (|d| - delta / 2) outside.
GK_HD float huber(float d, float delta) {
  float a = fabsf(d), c = fminf(a, delta);
  return c * (a - 0.5f * c);
}
GK_HD float clamp_to(float d, float bound) { return d < -bound ? -bound : (d > bound ? bound : d); }

struct Huber {  // p1 = delta
  static GK_HD float loss(float x, float t, float, float delta, float) { return huber(x - t, delta); }
  static GK_HD float grad_input(float x, float t, float, float delta, float) { return clamp_to(x - t, delta); }
  static GK_HD float grad_target(float x, float t, float, float delta, float) { return -clamp_to(x - t, delta); }
};

struct SmoothL1 {  // p1 = beta > 0 (beta = 0 runs as L1): Huber / beta
  static GK_HD float loss(float x, float t, float, float beta, float) { return huber(x - t, beta) / beta; }
  static GK_HD float grad_input(float x, float t, float, float beta, float) { return clamp_to(x - t, beta) / beta; }
  static GK_HD float grad_target(float x, float t, float, float beta, float) { return -clamp_to(x - t, beta) / beta; }
};

struct Bce {  // each log clamped at -100, the gradient's x (1 - x) floored at 1e-12, as in ATen
  static GK_HD float loss(float x, float t, float, float, float) {
    return -(t * fmaxf(logf(x), -100.0f) + (1.0f - t) * fmaxf(log1pf(-x), -100.0f));
  }
  static GK_HD float grad_input(float x, float t, float, float, float) {
    return (x - t) / fmaxf((1.0f - x) * x, 1e-12f);
  }
  static GK_HD float grad_target(float x, float, float, float, float) { return log1pf(-x) - logf(x); }
};

struct BceWithLogits {  // pw = pos_weight (1 without)
  static GK_HD float loss(float x, float t, float pw, float, float) { return bce_with_logits(x, t, pw); }
  static GK_HD float grad_input(float x, float t, float pw, float, float) {
    float p, q;
    sigmoid_pair(x, p, q);
    return p * (1.0f + (pw - 1.0f) * t) - pw * t;
  }
  static GK_HD float grad_target(float x, float, float pw, float, float) { return pw * softplus(-x) - softplus(x); }
};

// torchvision's sigmoid focal loss, p1 = alpha (< 0: no weighting), p2 = gamma:
// alpha_t ce m^gamma with m = 1 - p_t = p (1 - t) + (1 - p) t.
struct Focal {
  struct Terms { float alpha_t, ce, m, m_gamma, dm, p, q; };
  static GK_HD Terms terms(float x, float t, float alpha, float gamma) {
    Terms s;
    sigmoid_pair(x, s.p, s.q);
    s.ce = bce_with_logits(x, t, 1.0f);
    s.m = s.p * (1.0f - t) + s.q * t;
    s.alpha_t = alpha >= 0.0f ? alpha * t + (1.0f - alpha) * (1.0f - t) : 1.0f;
    s.m_gamma = focal_power(s.m, gamma);
    s.dm = gamma == 0.0f ? 0.0f : gamma * focal_power(s.m, gamma - 1.0f);  // d m^gamma / dm
    return s;
  }
  static GK_HD float loss(float x, float t, float, float alpha, float gamma) {
    Terms s = terms(x, t, alpha, gamma);
    return s.alpha_t * s.ce * s.m_gamma;
  }
  static GK_HD float grad_input(float x, float t, float, float alpha, float gamma) {
    Terms s = terms(x, t, alpha, gamma);
    return s.alpha_t * ((s.p - t) * s.m_gamma + s.ce * s.dm * s.p * s.q * (1.0f - 2.0f * t));
  }
  static GK_HD float grad_target(float x, float t, float, float alpha, float gamma) {
    Terms s = terms(x, t, alpha, gamma);
    float g = s.alpha_t * (-x * s.m_gamma + s.ce * s.dm * (1.0f - 2.0f * s.p));
    return alpha >= 0.0f ? g + (2.0f * alpha - 1.0f) * s.ce * s.m_gamma : g;
  }
};

// ---- chunk bodies ----

// The operands of one 16-byte chunk as fp32; a null weight/pos_weight reads as 1. Full chunks of
// aligned arrays load as one 128-bit access each.
template <class T>
struct Chunk {
  static const int V = Vec16<T>::size;
  float x[V], t[V], w[V], pw[V];
  long long first;
  int count;  // elements of this chunk inside the array (V but for the tail)
};

template <class T>
GK_HD void load_values(const T* p, long long first, int count, bool vector, float* out) {
  const int V = Vec16<T>::size;
  if (!p) {
    for (int k = 0; k < V; ++k) out[k] = 1.0f;
  } else if (vector) {
    Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(p + first);
    for (int k = 0; k < V; ++k) out[k] = to_float(in.v[k]);
  } else {
    for (int k = 0; k < V; ++k) out[k] = k < count ? to_float(p[first + k]) : 0.5f;  // 0.5: harmless in any log
  }
}

template <class T>
GK_HD bool all_aligned(const T* a, const T* b, const T* c, const T* d) {
  return aligned16(a) && aligned16(b) && (!c || aligned16(c)) && (!d || aligned16(d));
}

template <class T>
GK_HD Chunk<T> load_chunk(long long chunk, const T* x, const T* t, const T* w, const T* pw, long long n, bool aligned) {
  Chunk<T> c;
  const int V = Chunk<T>::V;
  c.first = chunk * V;
  c.count = n - c.first < V ? int(n - c.first) : V;
  bool vector = aligned && c.count == V;
  load_values(x, c.first, c.count, vector, c.x);
  load_values(t, c.first, c.count, vector, c.t);
  load_values(w, c.first, c.count, vector, c.w);
  load_values(pw, c.first, c.count, vector, c.pw);
  return c;
}

template <class T>
GK_HD void store_chunk(T* out, const Chunk<T>& c, const float* values, bool vector) {
  const int V = Chunk<T>::V;
  if (vector && c.count == V) {
    Vec16<T> v;
    for (int k = 0; k < V; ++k) v.v[k] = from_float<T>(values[k]);
    *reinterpret_cast<Vec16<T>*>(out + c.first) = v;
    return;
  }
  for (int k = 0; k < c.count; ++k) out[c.first + k] = from_float<T>(values[k]);
}

// reduction "none": the chunk's losses into `out`.
template <class L, class T>
GK_HD void loss_none_chunk(long long chunk, const T* x, const T* t, const T* w, const T* pw, T* out, long long n,
                           float p1, float p2) {
  bool aligned = all_aligned(x, t, w, pw) && aligned16(out);
  Chunk<T> c = load_chunk(chunk, x, t, w, pw, n, aligned);
  float values[Chunk<T>::V];
  for (int k = 0; k < Chunk<T>::V; ++k) values[k] = L::loss(c.x[k], c.t[k], c.pw[k], p1, p2) * c.w[k];
  store_chunk(out, c, values, aligned);
}

// reduction "sum"/"mean": the sum of the chunk's losses, in element order.
template <class L, class T>
GK_HD float loss_sum_chunk(long long chunk, const T* x, const T* t, const T* w, const T* pw, long long n, float p1,
                           float p2) {
  Chunk<T> c = load_chunk(chunk, x, t, w, pw, n, all_aligned(x, t, w, pw));
  float sum = 0.0f;
  for (int k = 0; k < c.count; ++k) sum += L::loss(c.x[k], c.t[k], c.pw[k], p1, p2) * c.w[k];
  return sum;
}

// The chunk's gradients: dx and/or dt (either may be null). The upstream gradient is g[i] per
// element, or (g_scalar) g[0] * scale for every element of a reduced loss.
template <class L, class T>
GK_HD void loss_backward_chunk(long long chunk, const T* x, const T* t, const T* w, const T* pw, const T* g, T* dx,
                               T* dt, long long n, float p1, float p2, int g_scalar, float scale) {
  bool aligned = all_aligned(x, t, w, pw) && (dx == nullptr || aligned16(dx)) && (dt == nullptr || aligned16(dt));
  Chunk<T> c = load_chunk(chunk, x, t, w, pw, n, aligned && (g_scalar || aligned16(g)));
  const int V = Chunk<T>::V;
  float up[V];
  if (g_scalar) {
    float value = to_float(g[0]) * scale;
    for (int k = 0; k < V; ++k) up[k] = value;
  } else {
    load_values(g, c.first, c.count, aligned && aligned16(g) && c.count == V, up);
  }
  float values[V];
  if (dx) {
    for (int k = 0; k < V; ++k) values[k] = L::grad_input(c.x[k], c.t[k], c.pw[k], p1, p2) * c.w[k] * up[k];
    store_chunk(dx, c, values, aligned);
  }
  if (dt) {
    for (int k = 0; k < V; ++k) values[k] = L::grad_target(c.x[k], c.t[k], c.pw[k], p1, p2) * c.w[k] * up[k];
    store_chunk(dt, c, values, aligned);
  }
}

}  // namespace gk
