// Layer norm and RMS norm row math: what one thread of a row-per-block kernel does, written as
// functions of the thread's index; normalization.cu merges the threads' results across the block.
// The CPU tests run normalization.cu itself, each thread a fiber of the block.
//
// A thread walks its row in 16-byte chunks (chunk tid, tid + nthreads, ...): a full chunk of an
// aligned row moves as one 128-bit access, the rest element by element. Every sweep over a row
// gives a thread the same chunks, so a thread re-reads only what it wrote itself.
#pragma once
#include "gk_math.cuh"

namespace gk {

// Running statistics of the values seen: the count n, their mean and m2, the sum of squared
// deviations from the mean (layer norm, Welford's update and Chan's merge: no cancellation) or
// the sum of squares (RMS norm, mean unused).
struct Moments {
  float n;
  float mean;
  float m2;
};

GK_HD Moments moments_empty() { return Moments{0.0f, 0.0f, 0.0f}; }

template <bool RMS>
GK_HD Moments moments_add(Moments a, float x) {
  a.n += 1.0f;
  if (RMS) {
    a.m2 += x * x;
  } else {
    float delta = x - a.mean;
    a.mean += delta / a.n;
    a.m2 += delta * (x - a.mean);
  }
  return a;
}

template <bool RMS>
GK_HD Moments moments_merge(Moments a, Moments b) {
  float n = a.n + b.n;
  if (RMS) return Moments{n, 0.0f, a.m2 + b.m2};
  if (b.n == 0.0f) return a;
  if (a.n == 0.0f) return b;
  float delta = b.mean - a.mean, share = b.n / n;
  return Moments{n, a.mean + delta * share, a.m2 + b.m2 + delta * delta * a.n * share};
}

// 1 / sqrt(variance + eps) of a row of `cols` values (a row of length 0: variance 0).
GK_HD float moments_rstd(Moments st, long long cols, float eps) {
  float n = cols > 0 ? float(cols) : 1.0f;
  return 1.0f / sqrtf(st.m2 / n + eps);
}

template <class T>
GK_HD float parameter(const T* p, long long j, float absent) { return p ? to_float(p[j]) : absent; }

// The value normalised: (v - mean) * rstd * w + b (RMS: mean 0).
template <class T>
GK_HD float norm_value(float v, float mean, float rstd, const T* w, const T* b, long long j) {
  return (v - mean) * rstd * parameter(w, j, 1.0f) + parameter(b, j, 0.0f);
}

// The value to normalise at i: x[i], or (with a residual r) x[i] + r[i] rounded to the storage
// type, written to s[i] so the caller gets the very sum whose statistics are taken.
template <class T>
GK_HD float norm_source(const T* x, const T* r, T* s, long long i) {
  if (!r) return to_float(x[i]);
  T total = from_float<T>(to_float(x[i]) + to_float(r[i]));
  s[i] = total;
  return to_float(total);
}

template <class T, bool RMS>
GK_HD Moments norm_thread_stats(const T* x, const T* r, T* s, long long n, int tid, int nthreads) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(x) && (!r || (aligned16(r) && aligned16(s)));
  Moments st = moments_empty();
  for (long long c = tid; c < chunks; c += nthreads) {
    long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(x + first);
      if (r) {
        Vec16<T> res = *reinterpret_cast<const Vec16<T>*>(r + first);
        for (int k = 0; k < V; ++k) in.v[k] = from_float<T>(to_float(in.v[k]) + to_float(res.v[k]));
        *reinterpret_cast<Vec16<T>*>(s + first) = in;
      }
      for (int k = 0; k < V; ++k) st = moments_add<RMS>(st, to_float(in.v[k]));
    } else {
      for (long long i = first; i < n && i < first + V; ++i) st = moments_add<RMS>(st, norm_source(x, r, s, i));
    }
  }
  return st;
}

// Writes y from `src` (the input, or the sum the first sweep stored).
template <class T>
GK_HD void norm_thread_write(const T* src, const T* w, const T* b, T* y, long long n, float mean, float rstd, int tid,
                             int nthreads) {
  map_row(src, y, n, tid, nthreads, [=](float v, long long k) { return norm_value(v, mean, rstd, w, b, k); });
}

// Rows of at most CACHED_CHUNKS chunks per thread (the launcher's block sizes aim at four) are
// read once: the statistics sweep keeps the thread's chunks in registers, as stored (the rounded
// sum for the residual variants), and the write sweep normalises them from there.
const int CACHED_CHUNKS = 4;

template <class T>
struct RowCache {
  Vec16<T> chunk[CACHED_CHUNKS];
};

template <class T, bool RMS>
GK_HD Moments norm_thread_stats_cached(const T* x, const T* r, T* s, long long n, int tid, int nthreads,
                                       RowCache<T>& cache) {
  const int V = Vec16<T>::size;
  const bool vector = aligned16(x) && (!r || (aligned16(r) && aligned16(s)));
  Moments st = moments_empty();
  for (int k = 0; k < CACHED_CHUNKS; ++k) {
    const long long first = (tid + (long long)k * nthreads) * V;
    Vec16<T>& in = cache.chunk[k];
    if (vector && first + V <= n) {
      in = *reinterpret_cast<const Vec16<T>*>(x + first);
      if (r) {
        Vec16<T> res = *reinterpret_cast<const Vec16<T>*>(r + first);
        for (int e = 0; e < V; ++e) in.v[e] = from_float<T>(to_float(in.v[e]) + to_float(res.v[e]));
        *reinterpret_cast<Vec16<T>*>(s + first) = in;
      }
      for (int e = 0; e < V; ++e) st = moments_add<RMS>(st, to_float(in.v[e]));
    } else {
      for (int e = 0; e < V; ++e) {
        if (first + e < n) {
          float value = norm_source(x, r, s, first + e);
          in.v[e] = from_float<T>(value);  // exact: value is a T already
          st = moments_add<RMS>(st, value);
        }
      }
    }
  }
  return st;
}

template <class T>
GK_HD void norm_thread_write_cached(const RowCache<T>& cache, const T* w, const T* b, T* y, long long n, float mean,
                                    float rstd, int tid, int nthreads) {
  const int V = Vec16<T>::size;
  const bool vector = aligned16(y);
  for (int k = 0; k < CACHED_CHUNKS; ++k) {
    const long long first = (tid + (long long)k * nthreads) * V;
    const Vec16<T>& in = cache.chunk[k];
    if (vector && first + V <= n) {
      Vec16<T> out;
      for (int e = 0; e < V; ++e) out.v[e] = from_float<T>(norm_value(to_float(in.v[e]), mean, rstd, w, b, first + e));
      *reinterpret_cast<Vec16<T>*>(y + first) = out;
    } else {
      for (int e = 0; e < V; ++e)
        if (first + e < n) y[first + e] = from_float<T>(norm_value(to_float(in.v[e]), mean, rstd, w, b, first + e));
    }
  }
}

// Backward. With xhat = (x - mean) * rstd and g = dy * w, a row needs sum(g) and sum(g * xhat);
// then dx = rstd * (g - sum(g)/n - xhat * sum(g xhat)/n) (RMS: without the sum(g) term), plus
// the gradient ds of the sum output, and this row's dy * xhat and dy add to the block's partial
// dw and db rows (each element owned by one thread of one block: no atomics).
struct GradSums {
  float g;
  float gx;
};

GK_HD void grad_sums_add(GradSums& sums, float dy, float x, float w, float mean, float rstd) {
  float g = dy * w;
  sums.g += g;
  sums.gx += g * ((x - mean) * rstd);
}

template <class T>
GK_HD GradSums grad_thread_sums(const T* dy, const T* x, const T* w, long long n, float mean, float rstd, int tid,
                                int nthreads) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(dy) && aligned16(x);
  GradSums sums{0.0f, 0.0f};
  for (long long c = tid; c < chunks; c += nthreads) {
    long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> d = *reinterpret_cast<const Vec16<T>*>(dy + first), v = *reinterpret_cast<const Vec16<T>*>(x + first);
      for (int k = 0; k < V; ++k)
        grad_sums_add(sums, to_float(d.v[k]), to_float(v.v[k]), parameter(w, first + k, 1.0f), mean, rstd);
    } else {
      for (long long i = first; i < n && i < first + V; ++i)
        grad_sums_add(sums, to_float(dy[i]), to_float(x[i]), parameter(w, i, 1.0f), mean, rstd);
    }
  }
  return sums;
}

GK_HD float grad_value(float dy, float xhat, float w, float rstd, float mean_g, float mean_gx) {
  return rstd * (dy * w - mean_g - xhat * mean_gx);
}

// dx at element j of the row, and its dw/db terms added to the partial rows.
template <class T>
GK_HD T grad_element(float d, float v, float s, const T* w, float* dw_part, float* db_part, long long j, float mean,
                     float rstd, float mean_g, float mean_gx) {
  float xhat = (v - mean) * rstd;
  if (dw_part) dw_part[j] += d * xhat;
  if (db_part) db_part[j] += d;
  return from_float<T>(grad_value(d, xhat, parameter(w, j, 1.0f), rstd, mean_g, mean_gx) + s);
}

template <class T>
GK_HD void grad_thread_write(const T* dy, const T* ds, const T* x, const T* w, T* dx, float* dw_part, float* db_part,
                             long long n, float mean, float rstd, float mean_g, float mean_gx, int tid, int nthreads) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(dy) && aligned16(x) && aligned16(dx) && (!ds || aligned16(ds));
  for (long long c = tid; c < chunks; c += nthreads) {
    long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> d = *reinterpret_cast<const Vec16<T>*>(dy + first), v = *reinterpret_cast<const Vec16<T>*>(x + first),
               out;
      Vec16<T> s = ds ? *reinterpret_cast<const Vec16<T>*>(ds + first) : Vec16<T>{};
      for (int k = 0; k < V; ++k)
        out.v[k] = grad_element<T>(to_float(d.v[k]), to_float(v.v[k]), ds ? to_float(s.v[k]) : 0.0f, w, dw_part,
                                   db_part, first + k, mean, rstd, mean_g, mean_gx);
      *reinterpret_cast<Vec16<T>*>(dx + first) = out;
    } else {
      for (long long i = first; i < n && i < first + V; ++i)
        dx[i] = grad_element<T>(to_float(dy[i]), to_float(x[i]), ds ? to_float(ds[i]) : 0.0f, w, dw_part, db_part, i,
                                mean, rstd, mean_g, mean_gx);
    }
  }
}

// Column sums of the partial rows, four columns per call (one 128-bit load per partial row
// where the rows are 16-byte aligned): out[c..c+3] = sum over p in order of part[p, c..c+3].
template <class T>
GK_HD void column_sum_quad(const float* part, T* out, long long parts, long long cols, long long first) {
  float total[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const bool vector = aligned16(part) && cols % 4 == 0;
  for (long long p = 0; p < parts; ++p) {
    const float* row = part + p * cols;
    if (vector) {
      Vec16<float> in = *reinterpret_cast<const Vec16<float>*>(row + first);
      for (int k = 0; k < 4; ++k) total[k] += in.v[k];
    } else {
      for (long long c = first; c < cols && c < first + 4; ++c) total[c - first] += row[c];
    }
  }
  for (long long c = first; c < cols && c < first + 4; ++c) out[c] = from_float<T>(total[c - first]);
}

}  // namespace gk
