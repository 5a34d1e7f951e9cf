"""Differentiable ops for torch tensors, named as in ``torch.nn.functional``.

Each family's ``torch.autograd.Function``s live in ``gpukernels/torch/_<family>.py``; this
module is the public namespace that gathers them.
"""

from ._activation import gelu, leaky_relu, relu, sigmoid, tanh
from ._rnn import gru_cell, gru_layer, lstm_cell, lstm_layer, rnn_cell, rnn_layer
from ._attention import attention, attention_scores, scaled_dot_product_attention
from ._linear import linear
from ._softmax import log_softmax, masked_softmax, softmax
from ._loss import (
    binary_cross_entropy, binary_cross_entropy_with_logits, huber_loss, l1_loss, mse_loss, sigmoid_focal_loss,
    smooth_l1_loss,
)
from ._cross_entropy import cross_entropy, focal_loss, linear_cross_entropy, nll_loss
from ._normalization import add_layer_norm, add_rms_norm, layer_norm, rms_norm

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "softmax", "log_softmax", "masked_softmax", "scaled_dot_product_attention", "attention", "attention_scores", "rnn_cell", "lstm_cell", "gru_cell", "rnn_layer", "lstm_layer", "gru_layer", "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss", "cross_entropy", "nll_loss", "focal_loss", "linear_cross_entropy", "layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "linear"]
