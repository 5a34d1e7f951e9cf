"""gpukernels: hand-written Triton and CuPy kernels for neural-network training.

The functional API takes numpy arrays, torch tensors (CPU or CUDA) or cupy arrays and returns
the same kind. Which implementation runs is decided in one place (``gpukernels._dispatch``):
``use_backend(name)``, then ``GPUKERNELS_BACKEND``, then the inputs' library and device.
"""

from ._dispatch import BACKENDS, BackendStatus, BackendUnavailableError, backends, use_backend
from .ops.activation import (
    gelu, gelu_backward, leaky_relu, leaky_relu_backward, relu, relu_backward, sigmoid,
    sigmoid_backward, tanh, tanh_backward,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendStatus", "BackendUnavailableError", "backends", "use_backend", "__version__",
    "sigmoid", "tanh", "relu", "leaky_relu", "gelu",
    "sigmoid_backward", "tanh_backward", "relu_backward", "leaky_relu_backward", "gelu_backward",
]
