"""Drop-in replacements for ``torch.nn`` modules: same constructor arguments, defaults,
parameter names and shapes, so a ``state_dict`` moves between ours and torch's unchanged.
One module per family in this package; this namespace gathers them."""

from .activation import GELU, LeakyReLU, ReLU, Sigmoid, Tanh

__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "GELU"]
