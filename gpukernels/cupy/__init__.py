"""CuPy kernels, one module per op family, with their CUDA sources (``*.cu``, ``*.cuh``)
beside them. Per-element math lives in ``__host__ __device__`` headers and each module's host
code runs against a Runner (``_module``), so the CPU tests run the very kernels and launch glue
through g++ and NumPy; work on torch tensors runs on torch's current stream (``_stream``). Each
module lists its NVRTC programs in ``nvrtc_programs()`` for the compile gate, which finds the
modules of this package by itself."""
