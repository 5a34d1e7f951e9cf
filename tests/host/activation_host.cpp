// CPU harness for activation.cuh: the grid-stride loop of activation.cu run as a plain loop
// over chunks, calling the same chunk bodies the GPU kernels call.
#include "activation.cuh"

namespace {

template <class Act, class T>
void forward(const void* x, void* y, long long n, float slope) {
  long long chunks = (n + gk::Vec16<T>::size - 1) / gk::Vec16<T>::size;
  for (long long c = 0; c < chunks; ++c) gk::activation_forward_chunk<Act, T>(c, (const T*)x, (T*)y, n, slope);
}

template <class Act, class T>
void backward(const void* dy, const void* saved, void* dx, long long n, float slope) {
  long long chunks = (n + gk::Vec16<T>::size - 1) / gk::Vec16<T>::size;
  for (long long c = 0; c < chunks; ++c)
    gk::activation_backward_chunk<Act, T>(c, (const T*)dy, (const T*)saved, (T*)dx, n, slope);
}

// dtype: 0 float32, 1 float16, 2 bfloat16
template <class Act>
int run(int dtype, const void* a, const void* b, void* out, long long n, float slope, bool is_forward) {
  switch (dtype) {
    case 0: is_forward ? forward<Act, float>(a, out, n, slope) : backward<Act, float>(a, b, out, n, slope); return 0;
    case 1: is_forward ? forward<Act, gk::half>(a, out, n, slope) : backward<Act, gk::half>(a, b, out, n, slope); return 0;
    case 2: is_forward ? forward<Act, gk::bfloat16>(a, out, n, slope) : backward<Act, gk::bfloat16>(a, b, out, n, slope); return 0;
  }
  return 1;
}

// act: the order of gpukernels.cupy.activation.ACTS
int run_act(int act, int dtype, const void* a, const void* b, void* out, long long n, float slope, bool is_forward) {
  switch (act) {
    case 0: return run<gk::Sigmoid>(dtype, a, b, out, n, slope, is_forward);
    case 1: return run<gk::Tanh>(dtype, a, b, out, n, slope, is_forward);
    case 2: return run<gk::Relu>(dtype, a, b, out, n, slope, is_forward);
    case 3: return run<gk::LeakyRelu>(dtype, a, b, out, n, slope, is_forward);
    case 4: return run<gk::Gelu>(dtype, a, b, out, n, slope, is_forward);
    case 5: return run<gk::GeluTanh>(dtype, a, b, out, n, slope, is_forward);
  }
  return 1;
}

}  // namespace

extern "C" int gk_activation_forward(int act, int dtype, const void* x, void* y, long long n, float slope) {
  return run_act(act, dtype, x, nullptr, y, n, slope, true);
}

extern "C" int gk_activation_backward(int act, int dtype, const void* dy, const void* saved, void* dx, long long n,
                                      float slope) {
  return run_act(act, dtype, dy, saved, dx, n, slope, false);
}

// The storage conversions on their own, for exhaustive checks against numpy/torch rounding.
extern "C" void gk_half_round_trip(const float* in, unsigned short* bits, float* back, long long n) {
  for (long long i = 0; i < n; ++i) { bits[i] = gk::from_float<gk::half>(in[i]).bits; back[i] = gk::to_float(gk::half{bits[i]}); }
}
extern "C" void gk_bf16_round_trip(const float* in, unsigned short* bits, float* back, long long n) {
  for (long long i = 0; i < n; ++i) { bits[i] = gk::from_float<gk::bfloat16>(in[i]).bits; back[i] = gk::to_float(gk::bfloat16{bits[i]}); }
}
