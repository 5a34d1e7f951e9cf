"""PyTorch integration: autograd Functions (``functional``) and drop-in modules (``nn``).

CPU tensors train through the NumPy reference, CUDA tensors through the Triton kernels; the
dispatch layer's ``use_backend`` and ``GPUKERNELS_BACKEND`` apply here too.
"""
