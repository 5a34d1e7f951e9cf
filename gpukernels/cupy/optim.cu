// Multi-tensor optimizer and clipping kernels around the bodies in optim.cuh. One CUDA block
// per (tensor, tile) pair of the block map; a tile is THREADS chunks, one per thread. The table
// (device memory) holds each tensor's operand addresses and size, so one launch covers any
// number of tensors. Instantiated by name expression, e.g. "adam_multi_tensor<gk::half, float, true>".
#include "optim.cuh"

#define GK_THREADS 256

template <class P>
__device__ __forceinline__ long long chunk_first(const int* block_map, const gk::addr_t* table, int columns,
                                                 const gk::addr_t** row) {
  int tensor = block_map[2 * blockIdx.x], tile = block_map[2 * blockIdx.x + 1];
  *row = table + (long long)tensor * columns;
  return ((long long)tile * GK_THREADS + threadIdx.x) * gk::Chunk<P>::size;
}

template <class P, class S, bool MASTER>
__global__ void adam_multi_tensor(const gk::addr_t* table, const int* block_map, const float* grad_scale,
                                  const float* found_inf, float grad_sign, float beta1, float one_minus_beta1,
                                  float beta2, float one_minus_beta2, float log_beta1, float log_beta2, float lr,
                                  float eps, float weight_decay, float decay, float step_size,
                                  float bias_correction2_sqrt, int amsgrad, int device_step) {
  if (*found_inf != 0.0f) return;  // GradScaler found inf/NaN: the step is skipped on the device
  gk::AdamScalars s = {grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2, log_beta1, log_beta2, lr, eps,
                       weight_decay, decay, step_size, bias_correction2_sqrt, amsgrad, device_step};
  const gk::addr_t* row;
  long long first = chunk_first<P>(block_map, table, 8, &row);
  gk::adam_chunk<P, S, MASTER>(row, first, s, *grad_scale);
}

template <class P, class S, bool MASTER>
__global__ void sgd_multi_tensor(const gk::addr_t* table, const int* block_map, const float* grad_scale,
                                 const float* found_inf, float grad_sign, float lr, float momentum,
                                 float one_minus_dampening, float weight_decay, int nesterov, int first_step) {
  if (*found_inf != 0.0f) return;
  gk::SgdScalars s = {grad_sign, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step};
  const gk::addr_t* row;
  long long first = chunk_first<P>(block_map, table, 5, &row);
  gk::sgd_chunk<P, S, MASTER>(row, first, s, *grad_scale);
}

template <class P, class S, bool MASTER>
__global__ void rmsprop_multi_tensor(const gk::addr_t* table, const int* block_map, const float* grad_scale,
                                     const float* found_inf, float grad_sign, float lr, float alpha,
                                     float one_minus_alpha, float eps, float weight_decay, float momentum,
                                     int centered) {
  if (*found_inf != 0.0f) return;
  gk::RmspropScalars s = {grad_sign, lr, alpha, one_minus_alpha, eps, weight_decay, momentum, centered};
  const gk::addr_t* row;
  long long first = chunk_first<P>(block_map, table, 7, &row);
  gk::rmsprop_chunk<P, S, MASTER>(row, first, s, *grad_scale);
}

// Pass 1 of clipping: a block-wide reduction of the chunk parts, then one atomic per block.
template <class T>
__global__ void grad_norm_multi_tensor(const gk::addr_t* table, const int* block_map, float* acc, int kind, float p) {
  const gk::addr_t* row;
  long long first = chunk_first<T>(block_map, table, 2, &row);
  gk::NormPart part = gk::norm_chunk<T>(row, first, kind, p);
  __shared__ float values[GK_THREADS], nans[GK_THREADS];
  values[threadIdx.x] = part.value;
  nans[threadIdx.x] = part.nan;
  __syncthreads();
  for (unsigned stride = GK_THREADS / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      values[threadIdx.x] = gk::combine_norm(values[threadIdx.x], values[threadIdx.x + stride], kind);
      nans[threadIdx.x] += nans[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    // non-negative floats order like their bit patterns, so the inf-norm's max is an integer max
    if (kind == 1) atomicMax(reinterpret_cast<int*>(acc), __float_as_int(values[0]));
    else atomicAdd(acc, values[0]);
    if (nans[0] != nans[0]) atomicAdd(acc + 1, nans[0]);
  }
}

// Pass 2: scale by min(1, max_norm / (norm + 1e-6)), or clamp by value; block 0 reports the norm.
template <class T>
__global__ void clip_multi_tensor(const gk::addr_t* table, const int* block_map, const float* acc, float* total_out,
                                  float max_norm, int kind, float p, float clip_value, int by_value) {
  const gk::addr_t* row;
  long long first = chunk_first<T>(block_map, table, 2, &row);
  float coef = 1.0f;
  if (!by_value) {
    float total = gk::total_norm(acc[0], acc[1], kind, p);
    coef = gk::clip_coefficient(total, max_norm);
    if (blockIdx.x == 0 && threadIdx.x == 0) *total_out = total;
  }
  gk::clip_chunk<T>(row, first, coef, clip_value, by_value);
}
