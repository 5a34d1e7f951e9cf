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

// device_lr: the learning rate is read from lr_tensor (torch's tensor lr) on the device, so a
// captured CUDA graph replays with the value the tensor holds then; otherwise from lr.
__device__ __forceinline__ float learning_rate(float lr, const float* lr_tensor, int device_lr) {
  return device_lr ? *lr_tensor : lr;
}

template <class P, class S, bool MASTER>
__global__ void adam_multi_tensor(const gk::addr_t* table, const int* block_map, const float* grad_scale,
                                  const float* found_inf, const float* lr_tensor, float grad_sign, float beta1,
                                  float one_minus_beta1, float beta2, float one_minus_beta2, float log_beta1,
                                  float log_beta2, float lr, float eps, float weight_decay, float decay,
                                  float step_size, float bias_correction2_sqrt, float decoupled_weight_decay,
                                  int amsgrad, int device_step, int device_lr) {
  if (*found_inf != 0.0f) return;  // GradScaler found inf/NaN: the step is skipped on the device
  gk::AdamScalars s = {grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2, log_beta1, log_beta2,
                       learning_rate(lr, lr_tensor, device_lr), eps, weight_decay, decay, step_size,
                       bias_correction2_sqrt, decoupled_weight_decay, amsgrad, device_step, device_lr};
  const gk::addr_t* row;
  long long first = chunk_first<P>(block_map, table, 8, &row);
  gk::adam_chunk<P, S, MASTER>(row, first, s, *grad_scale);
}

template <class P, class S, bool MASTER>
__global__ void sgd_multi_tensor(const gk::addr_t* table, const int* block_map, const float* grad_scale,
                                 const float* found_inf, const float* lr_tensor, float grad_sign, float lr,
                                 float momentum, float one_minus_dampening, float weight_decay, int nesterov,
                                 int first_step, int device_lr) {
  if (*found_inf != 0.0f) return;
  gk::SgdScalars s = {grad_sign, learning_rate(lr, lr_tensor, device_lr), momentum, one_minus_dampening,
                      weight_decay, nesterov, first_step};
  const gk::addr_t* row;
  long long first = chunk_first<P>(block_map, table, 5, &row);
  gk::sgd_chunk<P, S, MASTER>(row, first, s, *grad_scale);
}

template <class P, class S, bool MASTER>
__global__ void rmsprop_multi_tensor(const gk::addr_t* table, const int* block_map, const float* grad_scale,
                                     const float* found_inf, const float* lr_tensor, float grad_sign, float lr,
                                     float alpha, float one_minus_alpha, float eps, float weight_decay,
                                     float momentum, int centered, int device_lr) {
  if (*found_inf != 0.0f) return;
  gk::RmspropScalars s = {grad_sign, learning_rate(lr, lr_tensor, device_lr), alpha, one_minus_alpha, eps,
                          weight_decay, momentum, centered};
  const gk::addr_t* row;
  long long first = chunk_first<P>(block_map, table, 7, &row);
  gk::rmsprop_chunk<P, S, MASTER>(row, first, s, *grad_scale);
}

namespace {

// The block's (value, nan) pair reduced over its threads in a fixed tree: the same bits every run.
__device__ gk::NormPart block_norm(gk::NormPart part, int kind) {
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
  gk::NormPart block = {values[0], nans[0]};
  __syncthreads();  // the shared arrays are reused only once every thread has read the result
  return block;
}

}  // namespace

// Pass 1 of clipping: each block's part of the norm into its own (value, nan) slot of partials.
// No float atomics: the norm comes out the same bits every run.
template <class T>
__global__ void grad_norm_multi_tensor(const gk::addr_t* table, const int* block_map, float* partials, int kind,
                                       float p) {
  const gk::addr_t* row;
  long long first = chunk_first<T>(block_map, table, 2, &row);
  gk::NormPart block = block_norm(gk::norm_chunk<T>(row, first, kind, p), kind);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = block.value;
    partials[2 * blockIdx.x + 1] = block.nan;
  }
}

// Pass 1b, one block: every slot of partials combined in a fixed order into acc[0] (the norm's sum
// or max) and acc[1] (NaN if a gradient is). Two slots per 16-byte load where aligned; unused
// slots hold zeros, which change neither a sum nor a max of magnitudes.
__global__ void norm_total(const float* partials, long long slots, float* acc, int kind) {
  gk::NormPart part = {0.0f, 0.0f};
  const long long pairs = (slots + 1) / 2;
  for (long long c = threadIdx.x; c < pairs; c += GK_THREADS) {
    float v[4];
    const long long first = 4 * c;
    if (2 * c + 2 <= slots && gk::aligned16(partials)) {
      gk::Vec16<float> chunk = *reinterpret_cast<const gk::Vec16<float>*>(partials + first);
      for (int k = 0; k < 4; ++k) v[k] = chunk.v[k];
    } else {
      for (int k = 0; k < 4; ++k) v[k] = first + k < 2 * slots ? partials[first + k] : 0.0f;
    }
    part.value = gk::combine_norm(gk::combine_norm(part.value, v[0], kind), v[2], kind);
    part.nan += v[1] + v[3];
  }
  gk::NormPart total = block_norm(part, kind);
  if (threadIdx.x == 0) {
    acc[0] = total.value;
    acc[1] = total.nan;
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
