// The storage conversions of gk_math.cuh on their own, for exhaustive checks against torch's
// rounding (the kernels themselves run through gpukernels.tools.verify.host.build_program).
#include "gk_math.cuh"

extern "C" void gk_half_round_trip(const float* in, unsigned short* bits, float* back, long long n) {
  for (long long i = 0; i < n; ++i) { bits[i] = gk::from_float<gk::half>(in[i]).bits; back[i] = gk::to_float(gk::half{bits[i]}); }
}
extern "C" void gk_bf16_round_trip(const float* in, unsigned short* bits, float* back, long long n) {
  for (long long i = 0; i < n; ++i) { bits[i] = gk::from_float<gk::bfloat16>(in[i]).bits; back[i] = gk::to_float(gk::bfloat16{bits[i]}); }
}
