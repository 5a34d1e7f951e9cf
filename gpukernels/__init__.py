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
from .ops.attention import (
    attention, attention_backward, attention_scores, attention_scores_backward, scaled_dot_product_attention,
    scaled_dot_product_attention_backward, scaled_dot_product_attention_forward,
)
from .ops.softmax import (
    log_softmax, log_softmax_backward, masked_softmax, masked_softmax_backward, softmax, softmax_backward,
)
from .ops.rnn import (
    gru_cell, gru_cell_backward, gru_layer, gru_layer_backward, lstm_cell, lstm_cell_backward, lstm_layer,
    lstm_layer_backward, rnn_cell, rnn_cell_backward, rnn_layer, rnn_layer_backward,
)
from .ops.loss import (
    binary_cross_entropy, binary_cross_entropy_backward, binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward, huber_loss, huber_loss_backward, l1_loss, l1_loss_backward, mse_loss,
    mse_loss_backward, sigmoid_focal_loss, sigmoid_focal_loss_backward, smooth_l1_loss, smooth_l1_loss_backward,
)
from .ops.cross_entropy import (
    cross_entropy, cross_entropy_backward, cross_entropy_forward, cross_entropy_target_backward, focal_loss,
    cross_entropy_weight_backward, focal_loss_backward, focal_loss_forward,
    linear_cross_entropy, linear_cross_entropy_backward, linear_cross_entropy_forward, nll_loss, nll_loss_backward,
)
from .ops.linear import linear, linear_backward
from .ops.optim import adam_step, clip_grad_norm_, clip_grad_value_, rmsprop_step, sgd_step
from .ops.normalization import (
    add_layer_norm, add_layer_norm_backward, add_rms_norm, add_rms_norm_backward, layer_norm, layer_norm_backward,
    rms_norm, rms_norm_backward,
)

from . import metrics  # gpukernels.metrics: torchmetrics-style functional and stateful metrics

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendStatus", "BackendUnavailableError", "backends", "use_backend", "__version__",
    "sigmoid", "tanh", "relu", "leaky_relu", "gelu",
    "sigmoid_backward", "tanh_backward", "relu_backward", "leaky_relu_backward", "gelu_backward",
    "softmax", "log_softmax", "masked_softmax", "softmax_backward", "log_softmax_backward",
    "masked_softmax_backward",
    "scaled_dot_product_attention", "scaled_dot_product_attention_forward", "scaled_dot_product_attention_backward",
    "attention_scores", "attention_scores_backward", "attention", "attention_backward",
    "rnn_cell", "lstm_cell", "gru_cell", "rnn_cell_backward", "lstm_cell_backward", "gru_cell_backward",
    "rnn_layer", "lstm_layer", "gru_layer", "rnn_layer_backward", "lstm_layer_backward", "gru_layer_backward",
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss", "mse_loss_backward", "l1_loss_backward", "huber_loss_backward", "smooth_l1_loss_backward",
    "binary_cross_entropy_backward", "binary_cross_entropy_with_logits_backward", "sigmoid_focal_loss_backward",
    "linear", "linear_backward",
    "adam_step", "sgd_step", "rmsprop_step", "clip_grad_norm_", "clip_grad_value_",
    "cross_entropy", "cross_entropy_forward", "cross_entropy_backward", "cross_entropy_target_backward", "nll_loss",
    "nll_loss_backward", "cross_entropy_weight_backward",
    "focal_loss", "focal_loss_forward", "focal_loss_backward",
    "linear_cross_entropy", "linear_cross_entropy_forward", "linear_cross_entropy_backward",
    "layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "layer_norm_backward", "rms_norm_backward", "add_layer_norm_backward", "add_rms_norm_backward",
]
