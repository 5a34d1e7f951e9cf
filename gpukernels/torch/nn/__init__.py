"""Drop-in replacements for ``torch.nn`` modules: same constructor arguments, defaults,
parameter names and shapes, so a ``state_dict`` moves between ours and torch's unchanged.
One module per family in this package; this namespace gathers them."""

from .activation import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .attention import AdditiveAttention, DotAttention
from .linear import MLP, Linear
from .softmax import LogSoftmax, Softmax
from .loss import BCELoss, BCEWithLogitsLoss, HuberLoss, L1Loss, MSELoss, SigmoidFocalLoss, SmoothL1Loss
from . import utils
from .cross_entropy import CrossEntropyLoss, FocalLoss, LinearCrossEntropyLoss, NLLLoss
from .normalization import LayerNorm, RMSNorm

__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "GELU", "Softmax", "LogSoftmax", "AdditiveAttention", "DotAttention", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "BCELoss", "BCEWithLogitsLoss", "SigmoidFocalLoss", "CrossEntropyLoss", "NLLLoss", "FocalLoss", "LinearCrossEntropyLoss", "LayerNorm", "RMSNorm", "Linear", "MLP"]
