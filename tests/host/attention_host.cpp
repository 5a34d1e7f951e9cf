// CPU harness for attention.cuh: the grid-stride loops of attention.cu run as plain loops over
// the work items, calling the same bodies the GPU kernels call.
#include "attention.cuh"

extern "C" void gk_attention_softmax_rows(float* s, const unsigned char* keep, float* lse, long long rows,
                                          long long n) {
  for (long long r = 0; r < rows; ++r) gk::softmax_rows_body(r, s, keep, lse, n);
}

extern "C" void gk_attention_softmax_backward_rows(const float* p, float* dp, long long rows, long long n) {
  for (long long r = 0; r < rows; ++r) gk::softmax_backward_rows_body(r, p, dp, n);
}

extern "C" void gk_attention_additive_scores(const float* qa, const float* kb, const float* v, float* e, long long B,
                                             long long Tq, long long Tk, long long A) {
  for (long long i = 0; i < B * Tq * Tk; ++i) gk::additive_scores_body(i, qa, kb, v, e, Tq, Tk, A);
}

extern "C" void gk_attention_additive_backward_query(const float* qa, const float* kb, const float* v, const float* de,
                                                     float* d_qa, float* d_v_rows, long long B, long long Tq,
                                                     long long Tk, long long A) {
  for (long long i = 0; i < B * Tq * ((A + 3) / 4); ++i)
    gk::additive_backward_query_body(i, qa, kb, v, de, d_qa, d_v_rows, Tq, Tk, A);
}

extern "C" void gk_attention_additive_backward_keys(const float* qa, const float* kb, const float* v, const float* de,
                                                    float* d_kb, long long B, long long Tq, long long Tk, long long A) {
  for (long long i = 0; i < B * Tk * ((A + 3) / 4); ++i)
    gk::additive_backward_keys_body(i, qa, kb, v, de, d_kb, Tq, Tk, A);
}
