// Optimizer and clipping bodies for the multi-tensor kernels in optim.cu. A table row describes
// one tensor: the addresses of its operands (parameter, gradient, state..., master weights) and,
// last, its size. A chunk is the elements one thread updates: 16 bytes of parameters, moved with
// 128-bit accesses when full and aligned, element by element at a tensor's tail. The GPU kernels
// call these functions; the CPU tests run those kernels through g++ (gpukernels/tools/verify/host.py).
#pragma once
#include "gk_math.cuh"

namespace gk {

typedef unsigned long long addr_t;

template <class T> GK_HD T* operand(const addr_t* row, int column) { return reinterpret_cast<T*>(row[column]); }

// ---- 128-bit global accesses. The addresses come from the table, not from kernel parameters, so
// the compiler cannot prove them global and would emit generic loads; state the space in PTX. ----

struct alignas(16) Raw16 { u32 w[4]; };

GK_HD Raw16 load16(const void* p) {
  Raw16 r;
#if defined(__CUDA_ARCH__)
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
#else
  memcpy(&r, p, 16);
#endif
  return r;
}

GK_HD void store16(void* p, const Raw16& r) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};"
               :: "l"(p), "r"(r.w[0]), "r"(r.w[1]), "r"(r.w[2]), "r"(r.w[3]) : "memory");
#else
  memcpy(p, &r, 16);
#endif
}

// ---- chunks of V elements in, fp32 registers, chunks out ----

template <class T, int V>
GK_HD void load_chunk(const T* base, long long first, long long n, float (&out)[V]) {
  const int W = Vec16<T>::size;  // V is a multiple of W: chunks are sized by the widest storage
  if (first + V <= n && aligned16(base + first)) {
    for (int k = 0; k < V; k += W) {
      Raw16 raw = load16(base + first + k);
      const Vec16<T>& x = *reinterpret_cast<const Vec16<T>*>(&raw);
      for (int j = 0; j < W; ++j) out[k + j] = to_float(x.v[j]);
    }
    return;
  }
  for (int k = 0; k < V; ++k) out[k] = first + k < n ? to_float(base[first + k]) : 0.0f;
}

template <class T, int V>
GK_HD void store_chunk(T* base, long long first, long long n, const float (&in)[V]) {
  const int W = Vec16<T>::size;
  if (first + V <= n && aligned16(base + first)) {
    for (int k = 0; k < V; k += W) {
      Raw16 raw;
      Vec16<T>& x = *reinterpret_cast<Vec16<T>*>(&raw);
      for (int j = 0; j < W; ++j) x.v[j] = from_float<T>(in[k + j]);
      store16(base + first + k, raw);
    }
    return;
  }
  for (int k = 0; k < V && first + k < n; ++k) base[first + k] = from_float<T>(in[k]);
}

// ---- per-element updates (fp32), PyTorch's formulas ----

// lr, decay and step_size are the host's unless device_lr: then the kernel has put the device
// tensor's lr into lr, and adam_chunk forms decay (from decoupled_weight_decay) and step_size.
struct AdamScalars {
  float grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2, log_beta1, log_beta2, lr, eps, weight_decay,
      decay, step_size, bias_correction2_sqrt, decoupled_weight_decay;
  int amsgrad, device_step, device_lr;
};

struct SgdScalars {
  float grad_sign, lr, momentum, one_minus_dampening, weight_decay;
  int nesterov, first_step;
};

struct RmspropScalars {
  float grad_sign, lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  int centered;
};

// AdamW: decay = 1 - lr*wd and weight_decay = 0; Adam: decay = 1 and the L2 term in the gradient.
GK_HD void adam_element(float& p, float g, float& m, float& v, float& vmax, const AdamScalars& s, float step_size,
                        float bias_correction2_sqrt, float decay) {
  p *= decay;
  if (s.weight_decay != 0.0f) g += s.weight_decay * p;
  m = m + s.one_minus_beta1 * (g - m);  // torch's lerp
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  float denominator_v = v;
  if (s.amsgrad) {
    vmax = fmaxf(vmax, v);
    denominator_v = vmax;
  }
  p -= step_size * m / (sqrtf(denominator_v) / bias_correction2_sqrt + s.eps);
}

GK_HD void sgd_element(float& p, float g, float& b, const SgdScalars& s) {
  if (s.weight_decay != 0.0f) g += s.weight_decay * p;
  if (s.momentum != 0.0f) {
    b = s.first_step ? g : s.momentum * b + s.one_minus_dampening * g;  // first step: a copy of g
    g = s.nesterov ? g + s.momentum * b : b;
  }
  p -= s.lr * g;
}

GK_HD void rmsprop_element(float& p, float g, float& v, float& a, float& b, const RmspropScalars& s) {
  if (s.weight_decay != 0.0f) g += s.weight_decay * p;
  v = s.alpha * v + s.one_minus_alpha * g * g;
  float centered_v = v;
  if (s.centered) {
    a = a + s.one_minus_alpha * (g - a);  // torch's lerp
    centered_v = v - a * a;
  }
  float avg = sqrtf(centered_v) + s.eps;
  if (s.momentum > 0.0f) {
    b = s.momentum * b + g / avg;
    p -= s.lr * b;
  } else {
    p -= s.lr * g / avg;
  }
}

// ---- chunk bodies: P parameter/gradient storage, S state storage, MASTER: fp32 master weights
// (then S is float). V = elements per chunk, 16 bytes of parameters. ----

template <class P> struct Chunk { static const int size = Vec16<P>::size; };

template <class P, class S, bool MASTER, int V>
GK_HD void load_param(const addr_t* row, int master_column, long long first, long long n, float (&p)[V]) {
  if (MASTER) load_chunk<float, V>(operand<float>(row, master_column), first, n, p);
  else load_chunk<P, V>(operand<P>(row, 0), first, n, p);
}

template <class P, class S, bool MASTER, int V>
GK_HD void store_param(const addr_t* row, int master_column, long long first, long long n, const float (&p)[V]) {
  if (MASTER) store_chunk<float, V>(operand<float>(row, master_column), first, n, p);
  store_chunk<P, V>(operand<P>(row, 0), first, n, p);
}

template <class P, int V>
GK_HD void load_grad(const addr_t* row, long long first, long long n, float grad_scale, float sign, float (&g)[V]) {
  load_chunk<P, V>(operand<P>(row, 1), first, n, g);
  for (int k = 0; k < V; ++k) g[k] = g[k] / grad_scale * sign;
}

// Adam row: p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, master, step, size
template <class P, class S, bool MASTER>
GK_HD void adam_chunk(const addr_t* row, long long first, const AdamScalars& s, float grad_scale) {
  const int V = Chunk<P>::size;
  long long n = static_cast<long long>(row[7]);
  if (first >= n) return;
  float step_size = s.step_size, bias_correction2_sqrt = s.bias_correction2_sqrt, decay = s.decay;
  if (s.device_lr) decay = 1.0f - s.lr * s.decoupled_weight_decay;
  if (s.device_step) {  // this tensor's counter, read on the device; the corrections in double
    double t = *operand<const float>(row, 6);
    step_size = float(double(s.lr) / (1.0 - exp(t * double(s.log_beta1))));
    bias_correction2_sqrt = float(sqrt(1.0 - exp(t * double(s.log_beta2))));
  }
  float p[V], g[V], m[V], v[V], vmax[V] = {};
  load_param<P, S, MASTER, V>(row, 5, first, n, p);
  load_grad<P, V>(row, first, n, grad_scale, s.grad_sign, g);
  load_chunk<S, V>(operand<S>(row, 2), first, n, m);
  load_chunk<S, V>(operand<S>(row, 3), first, n, v);
  if (s.amsgrad) load_chunk<S, V>(operand<S>(row, 4), first, n, vmax);
  for (int k = 0; k < V; ++k) adam_element(p[k], g[k], m[k], v[k], vmax[k], s, step_size, bias_correction2_sqrt, decay);
  store_chunk<S, V>(operand<S>(row, 2), first, n, m);
  store_chunk<S, V>(operand<S>(row, 3), first, n, v);
  if (s.amsgrad) store_chunk<S, V>(operand<S>(row, 4), first, n, vmax);
  store_param<P, S, MASTER, V>(row, 5, first, n, p);
}

// SGD row: p, g, momentum_buffer, master, size
template <class P, class S, bool MASTER>
GK_HD void sgd_chunk(const addr_t* row, long long first, const SgdScalars& s, float grad_scale) {
  const int V = Chunk<P>::size;
  long long n = static_cast<long long>(row[4]);
  if (first >= n) return;
  float p[V], g[V], b[V] = {};
  load_param<P, S, MASTER, V>(row, 3, first, n, p);
  load_grad<P, V>(row, first, n, grad_scale, s.grad_sign, g);
  bool buffered = s.momentum != 0.0f;
  if (buffered && !s.first_step) load_chunk<S, V>(operand<S>(row, 2), first, n, b);
  for (int k = 0; k < V; ++k) sgd_element(p[k], g[k], b[k], s);
  if (buffered) store_chunk<S, V>(operand<S>(row, 2), first, n, b);
  store_param<P, S, MASTER, V>(row, 3, first, n, p);
}

// RMSprop row: p, g, square_avg, grad_avg, momentum_buffer, master, size
template <class P, class S, bool MASTER>
GK_HD void rmsprop_chunk(const addr_t* row, long long first, const RmspropScalars& s, float grad_scale) {
  const int V = Chunk<P>::size;
  long long n = static_cast<long long>(row[6]);
  if (first >= n) return;
  float p[V], g[V], v[V], a[V] = {}, b[V] = {};
  load_param<P, S, MASTER, V>(row, 5, first, n, p);
  load_grad<P, V>(row, first, n, grad_scale, s.grad_sign, g);
  load_chunk<S, V>(operand<S>(row, 2), first, n, v);
  if (s.centered) load_chunk<S, V>(operand<S>(row, 3), first, n, a);
  if (s.momentum > 0.0f) load_chunk<S, V>(operand<S>(row, 4), first, n, b);
  for (int k = 0; k < V; ++k) rmsprop_element(p[k], g[k], v[k], a[k], b[k], s);
  store_chunk<S, V>(operand<S>(row, 2), first, n, v);
  if (s.centered) store_chunk<S, V>(operand<S>(row, 3), first, n, a);
  if (s.momentum > 0.0f) store_chunk<S, V>(operand<S>(row, 4), first, n, b);
  store_param<P, S, MASTER, V>(row, 5, first, n, p);
}

// ---- gradient clipping. Norm kinds: 0 two-norm, 1 inf-norm, 2 any p. A part holds the norm's
// sum (or max) and a NaN marker (NaN if a gradient is NaN). Clip row: g, size. ----

struct NormPart { float value, nan; };

template <class T>
GK_HD NormPart norm_chunk(const addr_t* row, long long first, int kind, float p) {
  const int V = Chunk<T>::size;
  NormPart part = {0.0f, 0.0f};
  long long n = static_cast<long long>(row[1]);
  if (first >= n) return part;
  float g[V];
  load_chunk<T, V>(operand<T>(row, 0), first, n, g);
  for (int k = 0; k < V; ++k) {
    float a = fabsf(g[k]);
    if (a != a) { part.nan = a; continue; }
    if (kind == 0) part.value += a * a;
    else if (kind == 1) part.value = fmaxf(part.value, a);
    else if (a > 0.0f) part.value += expf(p * logf(a));
  }
  return part;
}

GK_HD float combine_norm(float a, float b, int kind) { return kind == 1 ? fmaxf(a, b) : a + b; }

GK_HD float total_norm(float acc, float nan, int kind, float p) {
  float total = kind == 0 ? sqrtf(acc) : kind == 1 ? acc : expf(logf(acc) / p);
  return total + nan;
}

// min(1, max_norm / (total + 1e-6)); a NaN norm gives a NaN factor, as torch's clamp does
GK_HD float clip_coefficient(float total, float max_norm) {
  float coef = max_norm / (total + 1e-6f);
  return coef > 1.0f ? 1.0f : coef;
}

template <class T>
GK_HD void clip_chunk(const addr_t* row, long long first, float coef, float clip_value, int by_value) {
  const int V = Chunk<T>::size;
  long long n = static_cast<long long>(row[1]);
  if (first >= n) return;
  float g[V];
  load_chunk<T, V>(operand<T>(row, 0), first, n, g);
  for (int k = 0; k < V; ++k) {
    if (by_value) g[k] = g[k] > clip_value ? clip_value : g[k] < -clip_value ? -clip_value : g[k];  // NaN stays
    else g[k] *= coef;
  }
  store_chunk<T, V>(operand<T>(row, 0), first, n, g);
}

}  // namespace gk
