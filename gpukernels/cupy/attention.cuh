// Attention bodies for the CuPy backend (the matmuls around them go to cuBLAS through cupy):
// a masked softmax over one fp32 score row (and its backward), and the additive (Bahdanau)
// scores and their gradients computed from the projections qa = W_q s and kb = W_k h without
// ever forming the [B, Tq, Tk, A] hidden tensor: each score, and each 4-wide slice of a
// gradient, loops over the attention size or the sequence itself. Rows and slices are read 16
// bytes at a time where they are aligned. The GPU kernels (attention.cu) call these functions;
// the CPU tests run those kernels through g++ (gpukernels/tools/verify/host.py).
#pragma once
#include "gk_math.cuh"

namespace gk {

GK_HD float neg_inf() { return bits_float(0xff800000u); }

// f(j, x) for x = row[j], j < n: 4 floats per 128-bit load while the row is aligned.
template <class F>
GK_HD void for_each_in_row(const float* row, long long n, F f) {
  long long j = 0;
  if (aligned16(row)) {
    for (; j + 4 <= n; j += 4) {
      Vec16<float> chunk = *reinterpret_cast<const Vec16<float>*>(row + j);
      for (int k = 0; k < 4; ++k) f(j + k, chunk.v[k]);
    }
  }
  for (; j < n; ++j) f(j, row[j]);
}

// Softmax of row s[0:n] over the positions where keep[j] != 0 (all of them when keep is null)
// and the scores are not -inf; written in place. Returns the row's log-sum-exp; a row with no
// position left gets probabilities 0 and log-sum-exp -inf (PyTorch's math backend gives 0).
GK_HD float masked_softmax_row(float* s, const unsigned char* keep, long long n) {
  float m = neg_inf();
  for_each_in_row(s, n, [&](long long j, float x) {
    if ((keep == nullptr || keep[j]) && x > m) m = x;
  });
  if (m == neg_inf()) {
    for (long long j = 0; j < n; ++j) s[j] = 0.0f;
    return neg_inf();
  }
  float sum = 0.0f;
  for_each_in_row(s, n, [&](long long j, float x) {
    if (keep == nullptr || keep[j]) sum += expf(x - m);
  });
  float inv = 1.0f / sum;
  for (long long j = 0; j < n; ++j) s[j] = (keep == nullptr || keep[j]) ? expf(s[j] - m) * inv : 0.0f;
  return m + logf(sum);
}

// d scores from d probabilities, in place: ds_j = p_j (dp_j - sum_k p_k dp_k).
GK_HD void softmax_backward_row(const float* p, float* dp, long long n) {
  float dot = 0.0f;
  for_each_in_row(p, n, [&](long long j, float x) { dot += x * dp[j]; });
  for (long long j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - dot);
}

// e = sum_a v_a tanh(qa_a + kb_a) over a < A.
GK_HD float additive_score(const float* qa, const float* kb, const float* v, long long A) {
  float e = 0.0f;
  for_each_in_row(qa, A, [&](long long a, float x) { e += v[a] * tanhf(x + kb[a]); });
  return e;
}

// Up to 4 consecutive features a0..a0+3 of one row, 16 bytes at a time when aligned.
struct Slice4 {
  float v[4];
  int count;
};

GK_HD Slice4 load_slice4(const float* row, long long a0, long long A) {
  Slice4 out;
  out.count = A - a0 < 4 ? int(A - a0) : 4;
  if (out.count == 4 && aligned16(row + a0)) {
    Vec16<float> chunk = *reinterpret_cast<const Vec16<float>*>(row + a0);
    for (int k = 0; k < 4; ++k) out.v[k] = chunk.v[k];
  } else {
    for (int k = 0; k < 4; ++k) out.v[k] = k < out.count ? row[a0 + k] : 0.0f;
  }
  return out;
}

// Gradient of the additive scores for one row r of one side and features a0..a0+3:
//   d_own[a] = sum_o de(r, o) v_a (1 - t^2),   d_v[a] += sum_o de(r, o) t,   t = tanh(own_a + other_{o,a})
// where "own" is qa_i (query side, o = key j) or kb_j (key side, o = query i); de(r, o) is read
// at de[o * de_stride]. Each thread owns its 4 outputs: no atomics.
GK_HD void additive_backward_slice(const float* own_row, const float* other, const float* de, long long de_stride,
                                   const float* v, long long n_other, long long a0, long long A, float* d_own_row,
                                   float* d_v_row) {
  Slice4 own = load_slice4(own_row, a0, A);
  Slice4 va = load_slice4(v, a0, A);
  float d_own[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d_v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (long long o = 0; o < n_other; ++o) {
    float g = de[o * de_stride];
    Slice4 oth = load_slice4(other + o * A, a0, A);
    for (int k = 0; k < own.count; ++k) {
      float t = tanhf(own.v[k] + oth.v[k]);
      d_own[k] += g * va.v[k] * ((1.0f - t) * (1.0f + t));
      d_v[k] += g * t;
    }
  }
  for (int k = 0; k < own.count; ++k) {
    d_own_row[a0 + k] = d_own[k];
    if (d_v_row != nullptr) d_v_row[a0 + k] = d_v[k];
  }
}

// ---- kernel bodies: one function of the work-item index each (a row, a score, a 4-wide slice) ----

GK_HD void softmax_rows_body(long long r, float* s, const unsigned char* keep, float* lse, long long n) {
  lse[r] = masked_softmax_row(s + r * n, keep ? keep + r * n : nullptr, n);
}

GK_HD void softmax_backward_rows_body(long long r, const float* p, float* dp, long long n) {
  softmax_backward_row(p + r * n, dp + r * n, n);
}

// e[b, i, j] for idx = (b Tq + i) Tk + j; qa (B, Tq, A), kb (B, Tk, A).
GK_HD void additive_scores_body(long long idx, const float* qa, const float* kb, const float* v, float* e, long long Tq,
                                long long Tk, long long A) {
  long long j = idx % Tk, bi = idx / Tk, b = bi / Tq;
  e[idx] = additive_score(qa + bi * A, kb + (b * Tk + j) * A, v, A);
}

// d_qa (B, Tq, A) and per-row partial d_v (B, Tq, A) for idx = (b Tq + i) slices + a0 / 4.
GK_HD void additive_backward_query_body(long long idx, const float* qa, const float* kb, const float* v,
                                        const float* de, float* d_qa, float* d_v_rows, long long Tq, long long Tk,
                                        long long A) {
  long long slices = (A + 3) / 4, a0 = (idx % slices) * 4, bi = idx / slices, b = bi / Tq;
  additive_backward_slice(qa + bi * A, kb + b * Tk * A, de + bi * Tk, 1, v, Tk, a0, A, d_qa + bi * A,
                          d_v_rows + bi * A);
}

// d_kb (B, Tk, A) for idx = (b Tk + j) slices + a0 / 4.
GK_HD void additive_backward_keys_body(long long idx, const float* qa, const float* kb, const float* v,
                                       const float* de, float* d_kb, long long Tq, long long Tk, long long A) {
  long long slices = (A + 3) / 4, a0 = (idx % slices) * 4, bj = idx / slices, b = bj / Tk, j = bj % Tk;
  additive_backward_slice(kb + bj * A, qa + b * Tq * A, de + b * Tq * Tk + j, Tk, v, Tq, a0, A, d_kb + bj * A,
                          nullptr);
}

}  // namespace gk
