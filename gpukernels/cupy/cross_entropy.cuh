// Cross-entropy row math: what one thread of a row-per-block kernel does, as functions of the
// thread's index; cross_entropy.cu merges the threads' results across the block. The formulas
// (loss = sum q (lse - x), gradient = p Q - q, the focal loss's Q = c_y = -dloss/dlog p_y) are
// derived in gpukernels/reference/cross_entropy.py. KIND: 0 class indices, 1 probabilities, 2 focal.
// The online log-sum-exp is softmax.cuh's RowStats.
#pragma once
#include "softmax.cuh"

namespace gk {

// A thread's share of a row: the online max/sum of exp, and (probabilities) sum q x and sum q,
// or (class indices with label smoothing) sum w x and sum w.
// x_y is the target's logit, added by the one thread that meets it: read in this first sweep, before
// the block merge's barrier, so a gradient written over the logits (the fused linear + CE hands
// its chunk of logits as the gradient) cannot overwrite it before another thread reads it.
struct CeStats {
  RowStats st;
  float qx;
  float qs;
  float xy;
};

GK_HD CeStats ce_empty() { return CeStats{stats_empty(), 0.0f, 0.0f, 0.0f}; }

GK_HD CeStats ce_merge(CeStats a, CeStats b) {
  return CeStats{stats_merge(a.st, b.st), a.qx + b.qx, a.qs + b.qs, a.xy + b.xy};
}

template <class T>
GK_HD float class_weight(const T* weight, long long k) { return weight ? to_float(weight[k]) : 1.0f; }

// The per-class target weight q_k of a probability row: w_k ((1 - s) t_k + s / C).
template <class T>
GK_HD float probability_weight(const T* probs, const T* weight, long long k, float smoothing, float uniform) {
  return (to_float(probs[k]) * (1.0f - smoothing) + uniform) * class_weight(weight, k);
}

// Column k of value v joins a thread's statistics.
template <class T, int KIND>
GK_HD void ce_add(CeStats& acc, float v, const T* probs, const T* weight, long long k, long long label,
                  float smoothing, float uniform) {
  acc.st = stats_add(acc.st, v);
  if (k == label) acc.xy += v;
  if (KIND == 1) {
    const float q = probability_weight(probs, weight, k, smoothing, uniform);
    acc.qx += q * v;
    acc.qs += q;
  } else if (KIND == 0 && smoothing > 0.0f) {
    const float w = class_weight(weight, k);
    acc.qx += w * v;
    acc.qs += w;
  }
}

// A thread walks its row in 16-byte chunks (chunk tid, tid + nthreads, ...), as softmax.cuh does:
// a full chunk of an aligned row moves as one 128-bit load, the rest element by element.
template <class T, int KIND>
GK_HD CeStats ce_thread_stats(const T* x, const T* probs, const T* weight, long long label, long long n,
                              float smoothing, int tid, int nthreads) {
  const float uniform = smoothing / float(n);
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(x);
  CeStats acc = ce_empty();
  for (long long c = tid; c < chunks; c += nthreads) {
    const long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(x + first);
      for (int j = 0; j < V; ++j)
        ce_add<T, KIND>(acc, to_float(in.v[j]), probs, weight, first + j, label, smoothing, uniform);
    } else {
      for (long long k = first; k < n && k < first + V; ++k)
        ce_add<T, KIND>(acc, to_float(x[k]), probs, weight, k, label, smoothing, uniform);
    }
  }
  return acc;
}

GK_HD float log_sum_exp(RowStats st) {
  const float shift = st.m == negative_infinity() ? 0.0f : st.m;
  return shift + logf(st.s);
}

// The row's loss and gradient coefficients: gradient_k = (p_k big_q - c_y [k == y] - c_w w_k) scale,
// and for probabilities - q_k instead of c_w w_k.
struct CeRow {
  float loss;
  float big_q;
  float c_y;
  float c_w;
  long long y;
};

// 1 - exp(lp) for lp <= 0, accurate as lp -> 0 (a series there: 1 - p_y cancels).
GK_HD float one_minus_exp(float lp) {
  if (lp > -1e-3f) return -lp * (1.0f + lp * (0.5f + lp * (1.0f / 6.0f + lp * (1.0f / 24.0f))));
  return 1.0f - expf(lp);
}

template <class T, int KIND>
GK_HD CeRow ce_row(long long label, const T* weight, long long n, CeStats total, long long ignore_index,
                   float smoothing, float gamma) {
  const float lse = log_sum_exp(total.st);
  if (KIND == 1) return CeRow{total.qs * lse - total.qx, total.qs, 0.0f, 0.0f, -1};
  const bool valid = label != ignore_index;
  if (!valid) return CeRow{0.0f, 0.0f, 0.0f, 0.0f, -1};
  const float x_y = total.xy;
  const float w_y = class_weight(weight, label);
  if (KIND == 0) {
    const float c_y = (1.0f - smoothing) * w_y;
    const float c_w = smoothing / float(n);
    return CeRow{c_y * (lse - x_y) + c_w * (total.qs * lse - total.qx), c_y + c_w * total.qs, c_y, c_w, label};
  }
  const float lp = x_y - lse;
  const float one_minus = one_minus_exp(lp);
  const float modulator = gamma == 0.0f ? 1.0f : powf(one_minus, gamma);
  const float ratio = one_minus > 0.0f ? expf(lp) / one_minus : 0.0f;
  const float d_lp = -w_y * (modulator - gamma * modulator * ratio * lp);  // d loss / d log p_y
  return CeRow{-w_y * modulator * lp, -d_lp, -d_lp, 0.0f, label};
}

template <class T, int KIND>
GK_HD float ce_grad(float v, const T* probs, const T* weight, long long k, float lse, CeRow row, float scale,
                    float smoothing, float uniform) {
  float g = expf(v - lse) * row.big_q;
  if (KIND == 1) g -= probability_weight(probs, weight, k, smoothing, uniform);
  else if (KIND == 0) g -= row.c_w * class_weight(weight, k);
  if (k == row.y) g -= row.c_y;
  return g * scale;
}

// grad may be x itself (the fused linear + CE writes the gradient over the logits): map_row reads
// each element before writing it, and the row's other reads happened in ce_thread_stats, before
// the block merge.
template <class T, int KIND>
GK_HD void ce_thread_grad(const T* x, const T* probs, const T* weight, T* grad, long long n, float lse, CeRow row,
                          float scale, float smoothing, int tid, int nthreads) {
  const float uniform = smoothing / float(n);
  map_row(x, grad, n, tid, nthreads, [=](float v, long long k) {
    return ce_grad<T, KIND>(v, probs, weight, k, lse, row, scale, smoothing, uniform);
  });
}

// A probability target's gradient: d loss / d t_k = (1 - s) w_k (lse - x_k), times the row's
// scale; factor = (1 - s) scale. Derived in gpukernels/reference/cross_entropy.py.
template <class T>
GK_HD float ce_target_grad(float v, const T* weight, long long k, float lse, float factor) {
  return (lse - v) * factor * class_weight(weight, k);
}

template <class T>
GK_HD void ce_thread_target_grad(const T* x, const T* weight, T* grad, long long n, float lse, float factor, int tid,
                                 int nthreads) {
  map_row(x, grad, n, tid, nthreads,
             [=](float v, long long k) { return ce_target_grad(v, weight, k, lse, factor); });
}

// The class weights' gradient of probability targets (derived in gpukernels/reference/cross_entropy.py):
// d loss / d w_k = sum_r g_r ((1 - s) t_rk + s / C) (lse_r - x_rk), a column sum in two stages. A
// thread owns a 16-byte chunk of columns and adds its rows in row order: the same bits every run.
GK_HD float ce_weight_term(float t, float v, float lse, float scale, float smoothing, float uniform) {
  return (t * (1.0f - smoothing) + uniform) * (lse - v) * scale;
}

// Stage 1: the chunk of columns [first, first + V) of rows [row0, row1) into out (the block's row of
// partials). Every row's chunk moves as one 128-bit load when all of them are aligned (aligned
// starts and a row length of whole chunks), element by element otherwise.
template <class T>
GK_HD void ce_weight_partial_chunk(const T* x, const T* probs, const float* lse, const float* scale,
                                   long long scale_stride, long long row0, long long row1, long long cols,
                                   long long first, float smoothing, float* out) {
  const int V = Vec16<T>::size;
  const float uniform = smoothing / float(cols);
  const bool vector = first + V <= cols && cols % V == 0 && aligned16(x) && aligned16(probs);
  float acc[Vec16<T>::size];
  for (int j = 0; j < V; ++j) acc[j] = 0.0f;
  for (long long r = row0; r < row1; ++r) {
    const long long at = r * cols + first;
    const float l = lse[r], g = scale[r * scale_stride];
    if (vector) {
      Vec16<T> xs = *reinterpret_cast<const Vec16<T>*>(x + at), ts = *reinterpret_cast<const Vec16<T>*>(probs + at);
      for (int j = 0; j < V; ++j)
        acc[j] += ce_weight_term(to_float(ts.v[j]), to_float(xs.v[j]), l, g, smoothing, uniform);
    } else {
      for (int j = 0; j < V && first + j < cols; ++j)
        acc[j] += ce_weight_term(to_float(probs[at + j]), to_float(x[at + j]), l, g, smoothing, uniform);
    }
  }
  for (int j = 0; j < V && first + j < cols; ++j) out[first + j] = acc[j];
}

// Stage 2: the chunk of columns [first, first + 4) of the [blocks, cols] float32 partials, added in
// block order, into out (the storage type).
template <class T>
GK_HD void ce_weight_sum_chunk(const float* partial, T* out, long long blocks, long long cols, long long first) {
  const bool vector = first + 4 <= cols && cols % 4 == 0 && aligned16(partial);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (long long b = 0; b < blocks; ++b) {
    const float* row = partial + b * cols + first;
    if (vector) {
      Vec16<float> chunk = *reinterpret_cast<const Vec16<float>*>(row);
      for (int j = 0; j < 4; ++j) acc[j] += chunk.v[j];
    } else {
      for (int j = 0; j < 4 && first + j < cols; ++j) acc[j] += row[j];
    }
  }
  for (int j = 0; j < 4 && first + j < cols; ++j) out[first + j] = from_float<T>(acc[j]);
}

}  // namespace gk
