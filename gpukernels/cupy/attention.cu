// Attention kernels for the CuPy backend: grid-stride loops around the bodies in attention.cuh.
// All buffers are fp32 (the Python side converts storage dtypes once around the cuBLAS matmuls).
#include "attention.cuh"

#define GK_GRID_STRIDE(i, count)                                                          \
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (count); \
       i += (long long)gridDim.x * blockDim.x)

// rows x n scores -> probabilities in place, lse[rows]; keep is rows x n bytes or null.
extern "C" __global__ void attention_softmax_rows(float* s, const unsigned char* keep, float* lse, long long rows,
                                                  long long n) {
  GK_GRID_STRIDE(r, rows) gk::softmax_rows_body(r, s, keep, lse, n);
}

// rows x n: dp -> ds in place, given the probabilities p.
extern "C" __global__ void attention_softmax_backward_rows(const float* p, float* dp, long long rows, long long n) {
  GK_GRID_STRIDE(r, rows) gk::softmax_backward_rows_body(r, p, dp, n);
}

extern "C" __global__ void attention_additive_scores(const float* qa, const float* kb, const float* v, float* e,
                                                     long long B, long long Tq, long long Tk, long long A) {
  GK_GRID_STRIDE(idx, B * Tq * Tk) gk::additive_scores_body(idx, qa, kb, v, e, Tq, Tk, A);
}

extern "C" __global__ void attention_additive_backward_query(const float* qa, const float* kb, const float* v,
                                                             const float* de, float* d_qa, float* d_v_rows, long long B,
                                                             long long Tq, long long Tk, long long A) {
  GK_GRID_STRIDE(idx, B * Tq * ((A + 3) / 4))
    gk::additive_backward_query_body(idx, qa, kb, v, de, d_qa, d_v_rows, Tq, Tk, A);
}

extern "C" __global__ void attention_additive_backward_keys(const float* qa, const float* kb, const float* v,
                                                            const float* de, float* d_kb, long long B, long long Tq,
                                                            long long Tk, long long A) {
  GK_GRID_STRIDE(idx, B * Tk * ((A + 3) / 4)) gk::additive_backward_keys_body(idx, qa, kb, v, de, d_kb, Tq, Tk, A);
}
