// Per-element math shared by every CuPy kernel. Everything here is __host__ __device__ and
// needs no CUDA header, so the same text compiles with NVRTC for the GPU and with g++ for the
// CPU tests, which run the very kernels of the .cu files over a CPU model of CUDA's launch
// (gpukernels/tools/verify/cuda_host.h).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GK_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#include <stdint.h>
#include <string.h>
#define GK_HD inline
#endif

namespace gk {

typedef unsigned short u16;
typedef unsigned int u32;

// ---- storage types: fp16 and bf16 as raw bits, converted to and from fp32 explicitly ----

struct half { u16 bits; };
struct bfloat16 { u16 bits; };

GK_HD u32 float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  u32 u; memcpy(&u, &f, 4); return u;
#endif
}

GK_HD float bits_float(u32 u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; memcpy(&f, &u, 4); return f;
#endif
}

GK_HD float to_float(float x) { return x; }
GK_HD float to_float(bfloat16 x) { return bits_float(u32(x.bits) << 16); }

GK_HD float to_float(half x) {
#if defined(__CUDA_ARCH__)
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits)); return f;
#else
  u32 sign = u32(x.bits & 0x8000u) << 16, exponent = (x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in fp32
    float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

template <class T> GK_HD T from_float(float f);
template <> GK_HD float from_float<float>(float f) { return f; }

template <> GK_HD bfloat16 from_float<bfloat16>(float f) {
  u32 u = float_bits(f);
  bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) { b.bits = u16((u >> 16) | 0x40u); return b; }  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  b.bits = u16(u >> 16);
  return b;
}

template <> GK_HD half from_float<half>(float f) {
  half h;
#if defined(__CUDA_ARCH__)
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
  u32 u = float_bits(f), sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) { h.bits = u16(sign | 0x7e00u); return h; }            // NaN
  if (magnitude >= 0x477ff000u) { h.bits = u16(sign | 0x7c00u); return h; }           // rounds to inf
  if (magnitude < 0x38800000u) {  // below the smallest normal: round in units of 2^-24
    float scaled = bits_float(magnitude) * 16777216.0f;  // exact
    u32 q = u32(scaled), rest_bits = float_bits(scaled - float(q));
    float rest = bits_float(rest_bits);
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) ++q;
    h.bits = u16(sign | q);
    return h;
  }
  u32 rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);  // round to nearest even
  h.bits = u16(sign | (((rounded >> 13) - (112u << 10)) & 0x7fffu));
#endif
  return h;
}

// ---- 16-byte vectors: one 128-bit global access per thread where alignment allows ----

template <class T> struct alignas(16) Vec16 {
  static const int size = 16 / int(sizeof(T));
  T v[16 / sizeof(T)];
};

template <class T> GK_HD bool aligned16(const T* p) { return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0; }

// out[k] = f(x[k], k) over this thread's 16-byte chunks of a row of n (128-bit loads and stores
// where both rows are aligned); f takes and returns fp32. out may be x itself: each element is
// read before it is written, by the same thread.
template <class T, class F>
GK_HD void map_row(const T* x, T* out, long long n, int tid, int nthreads, F f) {
  const int V = Vec16<T>::size;
  const long long chunks = (n + V - 1) / V;
  const bool vector = aligned16(x) && aligned16(out);
  for (long long c = tid; c < chunks; c += nthreads) {
    const long long first = c * V;
    if (vector && first + V <= n) {
      Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(x + first), res;
      for (int j = 0; j < V; ++j) res.v[j] = from_float<T>(f(to_float(in.v[j]), first + j));
      *reinterpret_cast<Vec16<T>*>(out + first) = res;
    } else {
      for (long long k = first; k < n && k < first + V; ++k) out[k] = from_float<T>(f(to_float(x[k]), k));
    }
  }
}

// ---- scalar math (fp32) ----

GK_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Phi(x) through erfc: 1 + erf(x / sqrt 2) would cancel for negative x.
GK_HD float normal_cdf(float x) { return 0.5f * erfcf(x * -0.70710678118654752f); }

// 0.5 (1 + tanh(u)) = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): no cancellation for u < 0.
GK_HD float gelu_tanh_gate(float x) { return sigmoid(1.59576912160573072f * (x + 0.044715f * x * x * x)); }

}  // namespace gk
