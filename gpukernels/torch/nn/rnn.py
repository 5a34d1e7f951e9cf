"""Drop-in ``torch.nn.RNN / LSTM / GRU / RNNCell / LSTMCell / GRUCell``: the same constructor
arguments, parameter names, shapes and initialisation (uniform in +-1/sqrt(hidden_size)), the
same inputs (batch_first, unbatched, PackedSequence with unsorted lengths) and outputs, so a
``state_dict`` moves between ours and torch's unchanged.

Extra keyword options (defaults keep PyTorch's behaviour): LSTM ``peephole`` (adds parameters
``weight_peep_l{k}[_reverse]`` of shape ``(3, hidden_size)``, and ``weight_peep`` on the cell)
and ``coupled`` (f = 1 - i; the f rows of the weights stay, unused); GRU
``linear_before_reset=False`` (the original GRU); on every layer module and cell ``heads``
(multi-head, block-diagonal recurrent weights: ``weight_hh*`` get the compact shape
``(gates*hidden_size, hidden_size // heads)``, see ``gpukernels.ops.rnn``; heads=1 is torch's).
LSTM ``proj_size`` is not supported.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ...ops.rnn import check_heads
from .. import _rnn as F

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _check_sizes(input_size, hidden_size, num_layers=1) -> None:
    for name, value, least in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1),
                               ("num_layers", num_layers, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")


class RNNBase(torch.nn.Module):
    """The shared machinery of RNN, LSTM and GRU (mode 'RNN_TANH', 'RNN_RELU', 'LSTM', 'GRU')."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, peephole: bool = False, coupled: bool = False,
                 linear_before_reset: bool = True, heads: int = 1):
        super().__init__()
        _check_sizes(input_size, hidden_size, num_layers)
        self.heads = check_heads(heads, hidden_size)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             f"element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers=1")
        if proj_size != 0:
            raise ValueError(f"proj_size={proj_size}: LSTM projections are not supported by gpukernels; "
                             "use torch.nn.LSTM for proj_size > 0")
        if (peephole or coupled) and mode != "LSTM":
            raise ValueError("peephole and coupled are LSTM options")
        if not linear_before_reset and mode != "GRU":
            raise ValueError("linear_before_reset is a GRU option")
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.peephole, self.coupled, self.linear_before_reset = peephole, coupled, linear_before_reset
        factory = {"device": device, "dtype": dtype}
        gate_size = _GATES[mode] * hidden_size
        directions = 2 if bidirectional else 1
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                # The recurrent weight holds only the diagonal blocks of its heads (heads=1: torch's).
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, hidden_size // heads))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if peephole:
                    shapes.append(("weight_peep", (3, hidden_size)))
                for name, shape in shapes:
                    setattr(self, name + suffix, torch.nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name + suffix)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -stdv, stdv)

    @property
    def all_weights(self) -> list[list[torch.nn.Parameter]]:
        per_direction = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i:i + per_direction]] for i in range(0, len(names), per_direction)]

    def flatten_parameters(self) -> None:
        """Present for code written against torch.nn (cuDNN's flat weight buffer); our kernels
        read the parameters as they are, so there is nothing to do."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            text += ", nonlinearity='relu'"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("peephole", False), ("coupled", False), ("linear_before_reset", True), ("heads", 1)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text

    # -----------------------------------------------------------------------------------------

    def _weights(self, layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_peep")

    def _run_direction(self, x, h0, c0, layer: int, direction: int, lengths):
        w_ih, w_hh, b_ih, b_hh, w_peep = self._weights(layer, direction)
        reverse = direction == 1
        if self.mode == "LSTM":
            return F.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep=w_peep, coupled=self.coupled,
                                reverse=reverse, lengths=lengths, heads=self.heads)
        if self.mode == "GRU":
            y, h_n = F.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, linear_before_reset=self.linear_before_reset,
                                 reverse=reverse, lengths=lengths, heads=self.heads)
        else:
            nonlinearity = "relu" if self.mode == "RNN_RELU" else "tanh"
            y, h_n = F.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity, reverse=reverse,
                                 lengths=lengths, heads=self.heads)
        return y, h_n, None

    def _check_hidden(self, state: torch.Tensor, name: str, batch: int) -> None:
        expected = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        if tuple(state.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} (num_layers * num_directions, batch, hidden_size), "
                             f"got {tuple(state.shape)}")

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lstm = self.mode == "LSTM"
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=False)  # lengths: a CPU int64 tensor
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be a torch.Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"input must be 2-D (unbatched) or 3-D, got shape {tuple(input.shape)}")
            batched, lengths = input.dim() == 3, None
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size={self.input_size}, got {x.shape[-1]}")
        batch = x.shape[1]
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = torch.zeros(self.num_layers * directions, batch, self.hidden_size, dtype=x.dtype, device=x.device)
            h0, c0 = zeros, (zeros if lstm else None)
        else:
            if lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("hx for LSTM must be a tuple (h_0, c_0)")
                h0, c0 = hx
            else:
                h0, c0 = hx, None
            if not batched:
                if h0.dim() != 2:
                    raise ValueError(f"for unbatched input, hx must be 2-D, got shape {tuple(h0.shape)}")
                h0 = h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            self._check_hidden(h0, "h_0" if lstm else "hx", batch)
            if c0 is not None:
                self._check_hidden(c0, "c_0", batch)

        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                y, h, c = self._run_direction(layer_input, h0[index], None if c0 is None else c0[index], layer,
                                              direction, lengths)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, self.dropout, training=True)
        output = layer_input
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if lstm else None

        if packed:
            order = input.sorted_indices
            if order is not None:
                output = output.index_select(1, order)
            sorted_lengths = lengths[order.cpu()] if order is not None else lengths
            data = pack_padded_sequence(output, sorted_lengths, enforce_sorted=True).data
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if lstm else h_n)


class RNN(RNNBase):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, heads: int = 1):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, device, dtype, heads=heads)


class LSTM(RNNBase):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, peephole: bool = False, coupled: bool = False, heads: int = 1):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, peephole=peephole, coupled=coupled, heads=heads)


class GRU(RNNBase):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, linear_before_reset: bool = True, heads: int = 1):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype, linear_before_reset=linear_before_reset, heads=heads)


# ---------------------------------------------------------------------------------------------
# Cells


class RNNCellBase(torch.nn.Module):
    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device=None, dtype=None,
                 peephole: bool = False, heads: int = 1):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.heads = check_heads(heads, hidden_size)
        self.weight_ih = torch.nn.Parameter(torch.empty(gates * hidden_size, input_size, **factory))
        self.weight_hh = torch.nn.Parameter(torch.empty(gates * hidden_size, hidden_size // heads, **factory))
        if bias:
            self.bias_ih = torch.nn.Parameter(torch.empty(gates * hidden_size, **factory))
            self.bias_hh = torch.nn.Parameter(torch.empty(gates * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if peephole:
            self.weight_peep = torch.nn.Parameter(torch.empty(3, hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        if self.heads != 1:
            text += f", heads={self.heads}"
        return text

    def _batched(self, input: torch.Tensor, states: tuple):
        """(input, states) as batched tensors, and whether to squeeze the results."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size={self.input_size}, got {input.shape[-1]}")
        if input.dim() == 2:
            return input, states, False
        for state in states:
            if state is not None and state.dim() != 1:
                raise ValueError(f"for a 1-D input the hidden state must be 1-D, got shape {tuple(state.shape)}")
        return input.unsqueeze(0), tuple(None if s is None else s.unsqueeze(0) for s in states), True


class RNNCell(RNNCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, heads: int = 1):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        super().__init__(input_size, hidden_size, bias, 1, device, dtype, heads=heads)
        self.nonlinearity = nonlinearity

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        x, (h,), squeeze = self._batched(input, (hx,))
        out = F.rnn_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                         nonlinearity=self.nonlinearity, heads=self.heads)
        return out.squeeze(0) if squeeze else out


class LSTMCell(RNNCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 peephole: bool = False, coupled: bool = False, heads: int = 1):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype, peephole=peephole, heads=heads)
        self.peephole, self.coupled = peephole, coupled

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        h, c = (None, None) if hx is None else hx
        x, (h, c), squeeze = self._batched(input, (h, c))
        h, c = F.lstm_cell(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                           w_peep=getattr(self, "weight_peep", None), coupled=self.coupled, heads=self.heads)
        return (h.squeeze(0), c.squeeze(0)) if squeeze else (h, c)


class GRUCell(RNNCellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 linear_before_reset: bool = True, heads: int = 1):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype, heads=heads)
        self.linear_before_reset = linear_before_reset

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        x, (h,), squeeze = self._batched(input, (hx,))
        out = F.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                         linear_before_reset=self.linear_before_reset, heads=self.heads)
        return out.squeeze(0) if squeeze else out


__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]
