// Softmax row math: what one thread of a row-per-block kernel does, written as functions of
// the thread's index; softmax.cu merges the threads' results across the block (warp shuffles,
// shared memory). The CPU tests run softmax.cu itself, each thread a fiber of the block.
//
// A thread walks its row in 16-byte chunks (chunk tid, tid + nthreads, ...): a full chunk of
// an aligned row moves as one 128-bit access, the rest element by element.
#pragma once
#include "gk_math.cuh"

namespace gk {

GK_HD float negative_infinity() { return -bits_float(0x7f800000u); }  // NVRTC rejects INFINITY

// Online softmax state: the running max m of the values seen and s = sum of exp(x - m).
struct RowStats {
  float m;
  float s;
};

GK_HD RowStats stats_empty() { return RowStats{negative_infinity(), 0.0f}; }

GK_HD RowStats stats_add(RowStats a, float x) {
  if (x == negative_infinity()) return a;  // masked, or exp(-inf) = 0: nothing to add
  if (x > a.m) {
    // Rescale the sum to the new max. (1 + (x - x)) is 1, or NaN for x = +inf, which makes
    // the row NaN as inf - inf does in PyTorch's softmax.
    a.s = a.s * expf(a.m - x) + (1.0f + (x - x));
    a.m = x;
  } else {
    a.s += expf(x - a.m);  // a NaN x lands here and makes the sum NaN, as in PyTorch
  }
  return a;
}

GK_HD RowStats stats_merge(RowStats a, RowStats b) {
  if (b.m == negative_infinity()) return a;
  if (a.m == negative_infinity()) return b;
  float m = a.m > b.m ? a.m : b.m;
  return RowStats{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Whether masked softmax keeps position j of a row (keep: a byte per position, or none;
// limit: the row's length from `lengths`, or the row length).
GK_HD bool kept(const unsigned char* keep, long long limit, long long j) { return j < limit && (!keep || keep[j]); }

template <class T>
GK_HD RowStats softmax_thread_stats(const T* x, const unsigned char* keep, long long limit, long long n, int tid,
                                    int nthreads) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(x);
  RowStats st = stats_empty();
  for (long long c = tid; c < chunks; c += nthreads) {
    long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(x + first);
      for (int k = 0; k < V; ++k)
        st = stats_add(st, kept(keep, limit, first + k) ? to_float(in.v[k]) : negative_infinity());
    } else {
      for (long long i = first; i < n && i < first + V; ++i)
        st = stats_add(st, kept(keep, limit, i) ? to_float(x[i]) : negative_infinity());
    }
  }
  return st;
}

// One output from the row's merged stats. `masked` (masked softmax): a dropped position, or
// any position of a row with nothing finite kept, is 0 instead of 0/0.
template <bool LOG>
GK_HD float softmax_value(float x, bool is_kept, RowStats st, bool masked) {
  if (masked && (!is_kept || st.m == negative_infinity())) return 0.0f;
  if (LOG) return x - st.m - logf(st.s);
  return expf(x - st.m) / st.s;
}

template <class T, bool LOG>
GK_HD void softmax_thread_write(const T* x, const unsigned char* keep, long long limit, T* y, long long n, RowStats st,
                                bool masked, int tid, int nthreads) {
  map_row(x, y, n, tid, nthreads,
          [=](float v, long long k) { return softmax_value<LOG>(v, kept(keep, limit, k), st, masked); });
}

// Backward: the row sum the gradient needs (softmax: sum dy*y; log_softmax: sum dy), then
// dx = y (dy - sum) or dy - exp(y) sum.
template <bool LOG>
GK_HD float grad_term(float dy, float y) { return LOG ? dy : dy * y; }

template <bool LOG>
GK_HD float grad_value(float dy, float y, float total) { return LOG ? dy - expf(y) * total : y * (dy - total); }

template <class T, bool LOG>
GK_HD float softmax_thread_grad_sum(const T* dy, const T* y, long long n, int tid, int nthreads) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(dy) && aligned16(y);
  float total = 0.0f;
  for (long long c = tid; c < chunks; c += nthreads) {
    long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> g = *reinterpret_cast<const Vec16<T>*>(dy + first), out = *reinterpret_cast<const Vec16<T>*>(y + first);
      for (int k = 0; k < V; ++k) total += grad_term<LOG>(to_float(g.v[k]), to_float(out.v[k]));
    } else {
      for (long long i = first; i < n && i < first + V; ++i) total += grad_term<LOG>(to_float(dy[i]), to_float(y[i]));
    }
  }
  return total;
}

template <class T, bool LOG>
GK_HD void softmax_thread_grad_write(const T* dy, const T* y, T* dx, long long n, float total, int tid, int nthreads) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(dy) && aligned16(y) && aligned16(dx);
  for (long long c = tid; c < chunks; c += nthreads) {
    long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> g = *reinterpret_cast<const Vec16<T>*>(dy + first), out = *reinterpret_cast<const Vec16<T>*>(y + first), d;
      for (int k = 0; k < V; ++k) d.v[k] = from_float<T>(grad_value<LOG>(to_float(g.v[k]), to_float(out.v[k]), total));
      *reinterpret_cast<Vec16<T>*>(dx + first) = d;
    } else {
      for (long long i = first; i < n && i < first + V; ++i)
        dx[i] = from_float<T>(grad_value<LOG>(to_float(dy[i]), to_float(y[i]), total));
    }
  }
}

}  // namespace gk
