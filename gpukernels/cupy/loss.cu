// Elementwise loss kernels around the chunk bodies of loss.cuh: a grid-stride loop over 16-byte
// chunks. Reductions run in two deterministic stages (no atomics): loss_forward_partial writes
// one fp32 sum per block (each thread's chunks in order, then a fixed shuffle/shared-memory tree),
// loss_sum adds the partials in one block the same way. Instantiated per loss and storage type by
// name expression (e.g. "loss_forward_partial<gk::Focal, gk::half>").
#include "gk_block.cuh"
#include "loss.cuh"

namespace {

__device__ long long chunk_count(long long n, int per_chunk) { return (n + per_chunk - 1) / per_chunk; }

}  // namespace

template <class L, class T>
__global__ void loss_forward_none(const T* x, const T* t, const T* w, const T* pw, T* out, long long n, float p1,
                                  float p2) {
  long long chunks = chunk_count(n, gk::Vec16<T>::size);
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += (long long)gridDim.x * blockDim.x)
    gk::loss_none_chunk<L, T>(c, x, t, w, pw, out, n, p1, p2);
}

template <class L, class T>
__global__ void loss_forward_partial(const T* x, const T* t, const T* w, const T* pw, float* partial, long long n,
                                     float p1, float p2) {
  long long chunks = chunk_count(n, gk::Vec16<T>::size);
  float sum = 0.0f;
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += (long long)gridDim.x * blockDim.x)
    sum += gk::loss_sum_chunk<L, T>(c, x, t, w, pw, n, p1, p2);
  sum = gk::block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// One block: out[0] = scale * the sum of the partials (scale 1/n for the mean), in T. Partials
// are read four at a time (one 128-bit load; the launcher allocates them aligned), the tail
// beyond the last whole four by the first threads.
template <class T>
__global__ void loss_sum(const float* partial, long long count, T* out, float scale) {
  typedef gk::Vec16<float> Quad;
  long long quads = gk::aligned16(partial) ? count / Quad::size : 0;
  float sum = 0.0f;
  for (long long i = threadIdx.x; i < quads; i += blockDim.x) {
    Quad q = reinterpret_cast<const Quad*>(partial)[i];
    for (int k = 0; k < Quad::size; ++k) sum += q.v[k];
  }
  for (long long i = quads * Quad::size + threadIdx.x; i < count; i += blockDim.x) sum += partial[i];
  sum = gk::block_sum(sum);
  if (threadIdx.x == 0) out[0] = gk::from_float<T>(sum * scale);
}

template <class L, class T>
__global__ void loss_backward(const T* x, const T* t, const T* w, const T* pw, const T* g, T* dx, T* dt, long long n,
                              float p1, float p2, int g_scalar, float scale) {
  long long chunks = chunk_count(n, gk::Vec16<T>::size);
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += (long long)gridDim.x * blockDim.x)
    gk::loss_backward_chunk<L, T>(c, x, t, w, pw, g, dx, dt, n, p1, p2, g_scalar, scale);
}
