// Metric kernels: confusion counts (integer atomics, per block in shared memory when the labels or
// classes are few, then one global add per counter), the exact AUROC scan (one block per column),
// binned ROC counts, and regression tile sums (two-stage: per-block partials, no float atomics).
// The per-element math is in metrics.cuh; what the outputs mean, in reference/metrics.py.
#include "metrics.cuh"

namespace {

const int MAX_PRIVATE_LABELS = 64;    // label_counts: 9 x 64 counters in shared memory
const int MAX_PRIVATE_CLASSES = 256;  // class_counts: 3 x 256 counters in shared memory
const int SCAN_THREADS = 256;         // roc_scan's block (its shared arrays are this long)
const int SUM_THREADS = 256;          // regression_partials' block (a power of two: the tree sum)

__device__ void zero_shared(gk::u64* local, int size) {
  for (int i = threadIdx.x; i < size; i += blockDim.x) local[i] = 0;
  __syncthreads();
}

// Add a block's shared counters (rows x width) to the global ones (rows x n_columns).
__device__ void flush_shared(const gk::u64* local, int rows, int width, gk::u64* counts, long long n_columns) {
  __syncthreads();
  for (int i = threadIdx.x; i < rows * width; i += blockDim.x) {
    long long column = i % width;
    if (column < n_columns && local[i] != 0) atomicAdd(counts + (i / width) * n_columns + column, local[i]);  // integer atomic
  }
}

// The tree sum of one float per thread, in a fixed order; every thread gets the total.
__device__ float block_sum(float value, float* buffer) {
  buffer[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (int(threadIdx.x) < stride) buffer[threadIdx.x] += buffer[threadIdx.x + stride];
    __syncthreads();
  }
  float total = buffer[0];
  __syncthreads();  // the buffer is reused by the next sum only once everyone has read it
  return total;
}

}  // namespace

// counts: (9, n_labels) uint64, zeroed by the caller (rows: see reference label_counts).
template <class T>
__global__ void __launch_bounds__(256) label_counts(const T* preds, const long long* target, gk::u64* counts,
                                                    long long n_rows, long long n_labels, float threshold,
                                                    float logit_threshold, long long ignore_index) {
  __shared__ gk::u64 local[9 * MAX_PRIVATE_LABELS];
  const bool privatise = n_labels <= MAX_PRIVATE_LABELS;
  zero_shared(local, 9 * MAX_PRIVATE_LABELS);
  gk::u64* out = privatise ? local : counts;
  const long long stride = privatise ? MAX_PRIVATE_LABELS : n_labels;
  const long long total = n_rows * n_labels;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long label = e % n_labels;
    const float p = gk::to_float(preds[e]);
    const long long t = target[e];
    if (p < 0.0f || p > 1.0f) atomicAdd(out + 8 * stride + label, 1ull);  // integer atomic
    if (gk::binary_kept(t, ignore_index)) {
      atomicAdd(out + gk::outcome(p > threshold, t == 1) * stride + label, 1ull);  // integer atomic
      atomicAdd(out + (4 + gk::outcome(p > logit_threshold, t == 1)) * stride + label, 1ull);  // integer atomic
    }
  }
  if (privatise) flush_shared(local, 9, MAX_PRIVATE_LABELS, counts, n_labels);
}

// counts: (3, n_classes) uint64 zeroed: tp, predicted, target per class. One thread per sample;
// P is the score type, or long long when the predictions are labels already (LABELS).
template <class P, bool LABELS>
__global__ void __launch_bounds__(256) class_counts(const P* preds, const long long* target, gk::u64* counts,
                                                    long long n_rows, long long n_classes, long long ignore_index) {
  __shared__ gk::u64 local[3 * MAX_PRIVATE_CLASSES];
  const bool privatise = n_classes <= MAX_PRIVATE_CLASSES;
  zero_shared(local, 3 * MAX_PRIVATE_CLASSES);
  gk::u64* out = privatise ? local : counts;
  const long long stride = privatise ? MAX_PRIVATE_CLASSES : n_classes;
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n_rows; r += (long long)gridDim.x * blockDim.x) {
    long long label;
    if constexpr (LABELS) {
      label = (long long)preds[r];
    } else {
      gk::ArgMax best = gk::argmax_start();
      for (long long j = 0; j < n_classes; ++j) best = gk::argmax_add(best, gk::to_float(preds[r * n_classes + j]), j);
      label = best.index;
    }
    const long long t = target[r];
    if (t < 0 || t >= n_classes || t == ignore_index || label < 0 || label >= n_classes) continue;
    if (label == t) atomicAdd(out + t, 1ull);  // integer atomic
    atomicAdd(out + stride + label, 1ull);  // integer atomic
    atomicAdd(out + 2 * stride + t, 1ull);  // integer atomic
  }
  if (privatise) flush_shared(local, 3, MAX_PRIVATE_CLASSES, counts, n_classes);
}

// One block per column of descending scores (labels 1, 0, 2 = not counted), blockDim.x =
// SCAN_THREADS: each thread scans one contiguous segment twice. Pass 1 counts the segment and
// finds its last tie-group start; thread 0 then walks the segments in order to give each its
// prefix counts and the counts before the tie group it opens in (which may have started
// segments earlier); pass 2 runs the scan steps. out: (3, columns) int64 twice-area, P, N.
template <class T>
__global__ void __launch_bounds__(256) roc_scan(const T* scores, const unsigned char* labels, long long* out,
                                                long long n) {
  __shared__ long long seg_tp[SCAN_THREADS], seg_fp[SCAN_THREADS], last_tp[SCAN_THREADS], last_fp[SCAN_THREADS];
  __shared__ long long pre_tp[SCAN_THREADS], pre_fp[SCAN_THREADS], open_tp[SCAN_THREADS], open_fp[SCAN_THREADS];
  __shared__ int has_start[SCAN_THREADS];
  const long long column = blockIdx.x;
  scores += column * n;
  labels += column * n;
  const int tid = threadIdx.x;
  const long long per = (n + blockDim.x - 1) / blockDim.x;
  const long long begin = tid * per < n ? tid * per : n;
  const long long end = begin + per < n ? begin + per : n;
  long long tp = 0, fp = 0, ltp = 0, lfp = 0;
  int started = 0;
  for (long long i = begin; i < end; ++i) {
    if (i == 0 || gk::to_float(scores[i]) != gk::to_float(scores[i - 1])) {
      ltp = tp;
      lfp = fp;
      started = 1;
    }
    tp += labels[i] == 1;
    fp += labels[i] == 0;
  }
  seg_tp[tid] = tp;
  seg_fp[tid] = fp;
  last_tp[tid] = ltp;
  last_fp[tid] = lfp;
  has_start[tid] = started;
  __syncthreads();
  if (tid == 0) {
    long long total_tp = 0, total_fp = 0, group_tp = 0, group_fp = 0;
    for (int s = 0; s < int(blockDim.x); ++s) {
      pre_tp[s] = total_tp;
      pre_fp[s] = total_fp;
      open_tp[s] = group_tp;
      open_fp[s] = group_fp;
      if (has_start[s]) {
        group_tp = total_tp + last_tp[s];
        group_fp = total_fp + last_fp[s];
      }
      total_tp += seg_tp[s];
      total_fp += seg_fp[s];
    }
    out[gridDim.x + column] = total_tp;
    out[2 * gridDim.x + column] = total_fp;
  }
  __syncthreads();
  gk::RocScan state{pre_tp[tid], pre_fp[tid], open_tp[tid], open_fp[tid], 0};
  for (long long i = begin; i < end; ++i)
    state = gk::roc_step(state, labels[i], i == 0 || gk::to_float(scores[i]) != gk::to_float(scores[i - 1]));
  __syncthreads();
  seg_tp[tid] = state.area2;
  __syncthreads();
  if (tid == 0) {
    long long area2 = 0;
    for (int s = 0; s < int(blockDim.x); ++s) area2 += seg_tp[s];
    out[column] = area2;
  }
}

// Histogram of (N, L) scores over the threshold bins: counts[(column * (T + 1) + bin) * 2 + kind],
// kind 0 positives, 1 negatives; bin T: below every threshold.
template <class T, bool ONE_VS_REST>
__global__ void __launch_bounds__(256) binned_counts(const T* preds, const long long* target, const float* thresholds,
                                                     gk::u64* counts, long long n_rows, long long n_columns,
                                                     long long n_thresholds, long long ignore_index) {
  const long long total = n_rows * n_columns;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
    const long long row = e / n_columns, column = e % n_columns;
    bool kept, positive;
    if constexpr (ONE_VS_REST) {
      const long long t = target[row];
      kept = t >= 0 && t < n_columns && t != ignore_index;
      positive = t == column;
    } else {
      const long long t = target[e];
      kept = gk::binary_kept(t, ignore_index);
      positive = t == 1;
    }
    if (!kept) continue;
    const long long bin = gk::threshold_bin(gk::to_float(preds[e]), thresholds, n_thresholds);
    atomicAdd(counts + (column * (n_thresholds + 1) + bin) * 2 + (positive ? 0 : 1), 1ull);  // integer atomic
  }
}

// Block (b, m) sums rows [b * chunk, (b + 1) * chunk) of output m of (N, M): partials[k][b][m],
// k = count, sum(target), centred sum of squares around the block's mean, squared, absolute and
// relative error. Two sweeps over the block's rows (the second needs the block's mean).
template <class T>
__global__ void __launch_bounds__(256) regression_partials(const T* preds, const T* target, float* partials,
                                                           long long n_rows, long long n_outputs, long long chunk,
                                                           float epsilon) {
  __shared__ float buffer[SUM_THREADS];
  const long long m = blockIdx.y;
  const long long begin = blockIdx.x * chunk;
  const long long end = begin + chunk < n_rows ? begin + chunk : n_rows;
  float count = 0.0f, total = 0.0f;
  for (long long r = begin + threadIdx.x; r < end; r += blockDim.x) {
    count += 1.0f;
    total += gk::to_float(target[r * n_outputs + m]);
  }
  count = block_sum(count, buffer);
  total = block_sum(total, buffer);
  const float mean = count > 0.0f ? total / count : 0.0f;
  float centred = 0.0f, squared = 0.0f, absolute = 0.0f, relative = 0.0f;
  for (long long r = begin + threadIdx.x; r < end; r += blockDim.x) {
    const float t = gk::to_float(target[r * n_outputs + m]);
    const gk::ErrorTerms terms = gk::error_terms(gk::to_float(preds[r * n_outputs + m]), t, epsilon);
    centred += (t - mean) * (t - mean);
    squared += terms.squared;
    absolute += terms.absolute;
    relative += terms.relative;
  }
  const float sums[6] = {count, total, block_sum(centred, buffer), block_sum(squared, buffer),
                         block_sum(absolute, buffer), block_sum(relative, buffer)};
  if (threadIdx.x == 0)
    for (int k = 0; k < 6; ++k) partials[(k * (long long)gridDim.x + blockIdx.x) * n_outputs + m] = sums[k];
}
