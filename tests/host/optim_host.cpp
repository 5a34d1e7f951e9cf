// CPU harness for optim.cuh: the kernels of optim.cu with their (tensor, tile, thread) indexing
// replaced by a loop over every tensor of the table and every chunk of it, calling the same chunk
// bodies the GPU kernels call. Tables hold host addresses here.
#include "optim.cuh"

namespace {

template <class P> long long chunk_size() { return gk::Chunk<P>::size; }

template <class P, class Body>
void for_each_chunk(const gk::addr_t* table, int tensors, int columns, Body body) {
  for (int t = 0; t < tensors; ++t) {
    const gk::addr_t* row = table + (long long)t * columns;
    long long n = (long long)row[columns - 1];
    for (long long first = 0; first < n; first += chunk_size<P>()) body(row, first);
  }
}

template <template <class, class, bool> class Step, class P, class S, bool M, class Scalars>
void run_all(const gk::addr_t* table, int tensors, int columns, const Scalars& s, float grad_scale) {
  for_each_chunk<P>(table, tensors, columns,
                    [&](const gk::addr_t* row, long long first) { Step<P, S, M>::run(row, first, s, grad_scale); });
}

// variant: 0 fp32, 1 fp16, 2 bf16, 3 fp16 + fp32 master, 4 bf16 + fp32 master (optim.py VARIANTS)
template <template <class, class, bool> class Step, class Scalars>
int dispatch(int variant, const gk::addr_t* table, int tensors, int columns, const Scalars& s, float grad_scale) {
  switch (variant) {
    case 0: run_all<Step, float, float, false>(table, tensors, columns, s, grad_scale); return 0;
    case 1: run_all<Step, gk::half, gk::half, false>(table, tensors, columns, s, grad_scale); return 0;
    case 2: run_all<Step, gk::bfloat16, gk::bfloat16, false>(table, tensors, columns, s, grad_scale); return 0;
    case 3: run_all<Step, gk::half, float, true>(table, tensors, columns, s, grad_scale); return 0;
    case 4: run_all<Step, gk::bfloat16, float, true>(table, tensors, columns, s, grad_scale); return 0;
  }
  return 1;
}

// The chunk bodies as class templates, so dispatch can take "which step" as one parameter.
template <class P, class S, bool M> struct Adam {
  static void run(const gk::addr_t* r, long long f, const gk::AdamScalars& s, float gs) { gk::adam_chunk<P, S, M>(r, f, s, gs); }
};
template <class P, class S, bool M> struct Sgd {
  static void run(const gk::addr_t* r, long long f, const gk::SgdScalars& s, float gs) { gk::sgd_chunk<P, S, M>(r, f, s, gs); }
};
template <class P, class S, bool M> struct Rmsprop {
  static void run(const gk::addr_t* r, long long f, const gk::RmspropScalars& s, float gs) {
    gk::rmsprop_chunk<P, S, M>(r, f, s, gs);
  }
};

template <class T>
void clip_norm(const gk::addr_t* table, int tensors, int kind, float p, float max_norm, float* total_out) {
  float acc = 0.0f, nan = 0.0f;
  for_each_chunk<T>(table, tensors, 2, [&](const gk::addr_t* r, long long f) {
    gk::NormPart part = gk::norm_chunk<T>(r, f, kind, p);
    acc = gk::combine_norm(acc, part.value, kind);
    nan += part.nan;
  });
  float total = gk::total_norm(acc, nan, kind, p);
  float coef = gk::clip_coefficient(total, max_norm);
  for_each_chunk<T>(table, tensors, 2, [&](const gk::addr_t* r, long long f) { gk::clip_chunk<T>(r, f, coef, 0.0f, 0); });
  *total_out = total;
}

template <class T>
void clip_value(const gk::addr_t* table, int tensors, float clip) {
  for_each_chunk<T>(table, tensors, 2, [&](const gk::addr_t* r, long long f) { gk::clip_chunk<T>(r, f, 1.0f, clip, 1); });
}

}  // namespace

// scalars: the floats of each Scalars struct in declaration order, then its ints.
extern "C" int gk_adam(int variant, const gk::addr_t* table, int tensors, const float* f, const int* i, float grad_scale) {
  gk::AdamScalars s = {f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], i[0], i[1]};
  return dispatch<Adam>(variant, table, tensors, 8, s, grad_scale);
}

extern "C" int gk_sgd(int variant, const gk::addr_t* table, int tensors, const float* f, const int* i, float grad_scale) {
  gk::SgdScalars s = {f[0], f[1], f[2], f[3], f[4], i[0], i[1]};
  return dispatch<Sgd>(variant, table, tensors, 5, s, grad_scale);
}

extern "C" int gk_rmsprop(int variant, const gk::addr_t* table, int tensors, const float* f, const int* i, float grad_scale) {
  gk::RmspropScalars s = {f[0], f[1], f[2], f[3], f[4], f[5], f[6], i[0]};
  return dispatch<Rmsprop>(variant, table, tensors, 7, s, grad_scale);
}

// dtype: 0 fp32, 1 fp16, 2 bf16
extern "C" int gk_clip_norm(int dtype, const gk::addr_t* table, int tensors, int kind, float p, float max_norm, float* total) {
  switch (dtype) {
    case 0: clip_norm<float>(table, tensors, kind, p, max_norm, total); return 0;
    case 1: clip_norm<gk::half>(table, tensors, kind, p, max_norm, total); return 0;
    case 2: clip_norm<gk::bfloat16>(table, tensors, kind, p, max_norm, total); return 0;
  }
  return 1;
}

extern "C" int gk_clip_value(int dtype, const gk::addr_t* table, int tensors, float clip) {
  switch (dtype) {
    case 0: clip_value<float>(table, tensors, clip); return 0;
    case 1: clip_value<gk::half>(table, tensors, clip); return 0;
    case 2: clip_value<gk::bfloat16>(table, tensors, clip); return 0;
  }
  return 1;
}
