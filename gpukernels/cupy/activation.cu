// Activation kernels: a grid-stride loop over 16-byte chunks around the bodies in
// activation.cuh. Instantiated per activation and storage type by name expression
// (e.g. "activation_forward<gk::Gelu, gk::half>").
#include "activation.cuh"

template <class Act, class T>
__global__ void activation_forward(const T* x, T* y, long long n, float slope) {
  long long chunks = (n + gk::Vec16<T>::size - 1) / gk::Vec16<T>::size;
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += (long long)gridDim.x * blockDim.x)
    gk::activation_forward_chunk<Act, T>(c, x, y, n, slope);
}

template <class Act, class T>
__global__ void activation_backward(const T* dy, const T* saved, T* dx, long long n, float slope) {
  long long chunks = (n + gk::Vec16<T>::size - 1) / gk::Vec16<T>::size;
  for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < chunks; c += (long long)gridDim.x * blockDim.x)
    gk::activation_backward_chunk<Act, T>(c, dy, saved, dx, n, slope);
}
