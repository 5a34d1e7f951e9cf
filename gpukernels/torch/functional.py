"""Differentiable ops for torch tensors, named as in ``torch.nn.functional``.

Each family's ``torch.autograd.Function``s live in ``gpukernels/torch/_<family>.py``; this
module is the public namespace that gathers them.
"""

from ._activation import gelu, leaky_relu, relu, sigmoid, tanh

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu"]
