"""CuPy kernels, one module per op family, with their CUDA sources (``*.cu``, ``*.cuh``)
beside them. Per-element math lives in ``__host__ __device__`` headers so the CPU tests run
it through g++; each module lists its NVRTC programs in ``nvrtc_programs()`` for the compile
gate, which finds the modules of this package by itself."""
