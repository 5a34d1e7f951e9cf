"""A small model under ``torch.compile``: ours (built only from ``gpukernels.torch.nn``) against
the same model from ``torch.nn`` (an eager composition for the additive attention, which
torch.nn lacks), the same weights in both, one training step (forward + backward).

Two cases, out of the default set (compiling takes tens of seconds on the CPU):

* ``model_step``: the steady-state step of each model compiled (Inductor), after the harness's
  warm-up has compiled it, and of each model in eager, side by side;
* ``model_compile``: what a fresh ``torch.compile`` costs before the first step returns:
  ``torch._dynamo.reset()``, compile, one step, timed as a whole (the first timing is a cold
  compile; the harness's median is over repeats, i.e. with Inductor's on-disk caches warm).

Ours compiles with ``fullgraph=True``. torch.nn's cannot: dynamo refuses to trace
``torch.nn.LSTM``/``GRU`` ("Attempted to wrap RNN, GRU, or LSTM"; its ``allow_rnn`` option is
off by default), so that model is compiled as users compile it, with graph breaks around its
recurrent layers, which then run in eager.

On a CPU shared with other work, set ``OMP_NUM_THREADS`` to the cores you may use: Inductor's
C++ kernels, torch and the NumPy reference each keep a thread pool, and oversubscribed pools
spin against each other (on a loaded 2-core machine every provider ran about 10x slower).

The model (also what tests/test_torch_compile.py compiles): a 2-layer bidirectional LSTM
encoder, a GRU over its outputs, additive attention of the GRU's last state over the encoder
outputs, GELU, log-softmax; the loss is the sum of the log-probabilities.
"""

from __future__ import annotations

import math

from .registry import BenchCase, register

INPUT, HIDDEN, ATTENTION = 16, 32, 24
CPU_SIZE = (12, 8)  # (T, B)
GPU_SIZE = (64, 64)


def _encoder_decoder(nn, attention_cls):
    """The model class over the module namespace ``nn`` (``gpukernels.torch.nn`` or ``torch.nn``)."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self, input_size=INPUT, hidden=HIDDEN, attention=ATTENTION):
            super().__init__()
            self.encoder = nn.LSTM(input_size, hidden, num_layers=2, bidirectional=True)
            self.decoder = nn.GRU(2 * hidden, hidden)
            self.attention = attention_cls(hidden, 2 * hidden, attention)
            self.activation = nn.GELU()
            self.log_softmax = nn.LogSoftmax(dim=-1)

        def forward(self, x):
            encoded, _ = self.encoder(x)                            # (T, B, 2H)
            _, h = self.decoder(encoded)                            # (1, B, H)
            context, _ = self.attention(h[-1], encoded.transpose(0, 1))
            return self.log_softmax(self.activation(torch.cat([context, h[-1]], dim=-1)))

    return Model


def _eager_additive_attention():
    """Bahdanau attention as users write it in torch: the (B, Tk, A) tensor is formed; the same
    parameter names and shapes as ``gpukernels.torch.nn.AdditiveAttention``."""
    import torch

    class AdditiveAttention(torch.nn.Module):
        def __init__(self, query_size, key_size, attention_size):
            super().__init__()
            self.query_proj = torch.nn.Linear(query_size, attention_size, bias=False)
            self.key_proj = torch.nn.Linear(key_size, attention_size, bias=False)
            self.v = torch.nn.Parameter(torch.empty(attention_size).uniform_(-1, 1) / math.sqrt(attention_size))

        def forward(self, query, keys):
            scores = torch.tanh(self.query_proj(query)[:, None, :] + self.key_proj(keys)) @ self.v
            weights = torch.softmax(scores, dim=-1)
            return (weights[:, :, None] * keys).sum(1), weights

    return AdditiveAttention


def build_models(seed: int = 0, device: str = "cpu"):
    """(ours, torch.nn's): the two models with the same weights."""
    import torch

    import gpukernels.torch.nn as gnn

    torch.manual_seed(seed)
    ours = _encoder_decoder(gnn, gnn.AdditiveAttention)().to(device)
    theirs = _encoder_decoder(torch.nn, _eager_additive_attention())().to(device)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def make_input(T: int, B: int, device: str = "cpu", seed: int = 1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, INPUT, generator=generator).to(device)


def train_step(model, x):
    """Forward and backward; the gradients land in the parameters' ``.grad``."""
    loss = model(x).sum()
    loss.backward()
    return loss


def _step_providers():
    import torch

    def step(which: str, compiled: bool):
        def make(inputs):
            model = inputs[which]
            if compiled:
                model = torch.compile(model, fullgraph=which == "ours")
            return lambda: train_step(model, inputs["x"])

        return make

    return {"gpukernels.compile": step("ours", True), "torch.nn.compile": step("theirs", True),
            "gpukernels": step("ours", False), "torch.nn": step("theirs", False)}


def _compile_providers():
    import torch

    def fresh_compile(which: str):
        def make(inputs):
            def run():
                torch._dynamo.reset()
                return train_step(torch.compile(inputs[which], fullgraph=which == "ours"), inputs["x"])

            return run

        return make

    return {"gpukernels.compile": fresh_compile("ours"), "torch.nn.compile": fresh_compile("theirs")}


def _setup(T: int, B: int):
    def make(device: str):
        ours, theirs = build_models(device=device)
        return {"ours": ours, "theirs": theirs, "x": make_input(T, B, device)}

    return make


def _register_all() -> None:
    for device, (T, B) in (("cpu", CPU_SIZE), ("cuda", GPU_SIZE)):
        for op, providers in (("model_step", _step_providers), ("model_compile", _compile_providers)):
            register(BenchCase(
                family="compiled", op=op, mode="full", dtype="float32", size=f"T={T},B={B},H={HIDDEN}",
                setup=_setup(T, B), providers=providers(), devices=(device,), in_default_set=False,
                eager="torch.nn",
            ))


_register_all()
