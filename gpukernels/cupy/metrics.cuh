// Metric math per element and per step, shared by the kernels of metrics.cu (NVRTC) and their CPU
// build (g++ over cuda_host.h). What the counts and sums mean: gpukernels/reference/metrics.py.
#pragma once
#include "gk_math.cuh"

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
// The CPU model runs one fiber at a time, so a read-modify-write is atomic there.
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {  // integer atomic
  unsigned long long old = *address;
  *address = old + value;
  return old;
}
#endif

namespace gk {

typedef unsigned long long u64;

// Whether a binary target counts: 0 or 1, and not ignore_index.
GK_HD bool binary_kept(long long t, long long ignore_index) { return (t == 0 || t == 1) && t != ignore_index; }

// A label's outcome: 0 tp, 1 fp, 2 tn, 3 fn (the row order of the counts).
GK_HD int outcome(bool predicted, bool positive) { return predicted ? (positive ? 0 : 1) : (positive ? 3 : 2); }

// The running first-maximum of a score row, as torch.argmax: a later equal value does not win.
struct ArgMax {
  float best;
  long long index;
};

GK_HD ArgMax argmax_start() { return ArgMax{-bits_float(0x7f800000u), 0}; }

GK_HD ArgMax argmax_add(ArgMax a, float x, long long j) {
  if (x > a.best) return ArgMax{x, j};
  return a;
}

// The bin of a score among n linearly spaced thresholds (ascending): the highest k with
// thresholds[k] <= score, or n when the score is below them all. A first guess from the spacing
// 1/(n-1), then a step either way against the thresholds themselves.
GK_HD long long threshold_bin(float p, const float* thresholds, long long n) {
  long long last = n - 1;
  float guess_f = floorf(p * float(last));
  // !(>= -1) also sends a NaN below every threshold rather than into an undefined conversion
  long long guess = !(guess_f >= -1.0f) ? -1 : (guess_f > float(last) ? last : (long long)guess_f);
  if (guess < last && p >= thresholds[guess + 1]) guess += 1;
  else if (guess >= 0 && p < thresholds[guess]) guess -= 1;
  return guess < 0 ? n : guess;
}

// One step of the exact AUROC scan over scores in descending order (labels 1, 0, or 2 = not
// counted). State: the counts before this element and, for its tie group, the counts before the
// group's first element. Adds twice the element's share of the Mann-Whitney count.
struct RocScan {
  long long tp, fp;              // positives and negatives so far
  long long tp_start, fp_start;  // ... before the current tie group
  long long area2;
};

GK_HD RocScan roc_step(RocScan s, unsigned char label, bool starts_group) {
  if (starts_group) {
    s.tp_start = s.tp;
    s.fp_start = s.fp;
  }
  if (label == 0) {
    s.area2 += s.tp_start + s.tp;
    s.fp += 1;
  } else if (label == 1) {
    s.area2 += s.fp - s.fp_start;
    s.tp += 1;
  }
  return s;
}

// The regression terms of one element: squared, absolute and relative error.
struct ErrorTerms {
  float squared, absolute, relative;
};

GK_HD ErrorTerms error_terms(float p, float t, float epsilon) {
  float e = fabsf(p - t);
  float scale = fabsf(t) > epsilon ? fabsf(t) : epsilon;
  return ErrorTerms{e * e, e, e / scale};
}

}  // namespace gk
