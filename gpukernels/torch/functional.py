"""Differentiable ops for torch tensors, named as in ``torch.nn.functional``.

Each family's ``torch.autograd.Function``s live in ``gpukernels/torch/_<family>.py``; this
module is the public namespace that gathers them.
"""

from ._activation import gelu, leaky_relu, relu, sigmoid, tanh
from ._rnn import gru_cell, gru_layer, lstm_cell, lstm_layer, rnn_cell, rnn_layer
from ._attention import attention, attention_scores, scaled_dot_product_attention
from ._linear import linear
from ._softmax import log_softmax, masked_softmax, softmax

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "softmax", "log_softmax", "masked_softmax", "scaled_dot_product_attention", "attention", "attention_scores", "rnn_cell", "lstm_cell", "gru_cell", "rnn_layer", "lstm_layer", "gru_layer", "linear"]
