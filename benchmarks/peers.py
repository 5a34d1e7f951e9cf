"""Peer libraries as extra baselines: what a user would pick instead of us, on the same cases.

A peer joins a case only when its package imports (none is a dependency of ours); otherwise the
run says it was absent (``absent_peers``). Peers are pure-Python packages, so they can travel to
an offline GPU machine as wheels (README, "The GPU proof").

* Liger-Kernel: its Triton softmax (``LigerSoftmaxFunction``, last dim) on the softmax cases.
* FlashRNN: its fused Triton LSTM (``backend="triton_fused"``) on the LSTM layer cases, with the
  input projection done by a matmul first, as in our layer and cuDNN's, so all three do the same
  work. FlashRNN's layout is [B, T, gates, heads, head_dim]; one head of size H is our layer,
  and on the multi-head cases (``heads=`` in the size) it gets our compact blocks as its heads.
"""

from __future__ import annotations

import dataclasses
import importlib.util

PEERS = {"liger_kernel": "Liger-Kernel", "flashrnn": "FlashRNN", "flash_attn": "FlashAttention (flash_attn)"}


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def absent_peers() -> list[str]:
    return [label for module, label in PEERS.items() if not importable(module)]


# ---------------------------------------------------------------------------------------------
# Liger-Kernel


def _liger_softmax(mode: str):
    def make(inputs):
        import torch
        from liger_kernel.ops.softmax import LigerSoftmaxFunction

        x = inputs["x"]
        if mode == "fwd":
            return lambda: LigerSoftmaxFunction.apply(x)
        leaf = x.detach().requires_grad_(True)
        y = LigerSoftmaxFunction.apply(leaf)
        return lambda: torch.autograd.grad(y, leaf, inputs["dy"], retain_graph=True)

    return make


# ---------------------------------------------------------------------------------------------
# FlashRNN


def _flashrnn_lstm(mode: str):
    def make(inputs):
        import torch
        from flashrnn import flashrnn

        from .rnn import _timed

        module, x = inputs["theirs"], inputs["x"]  # torch.nn.LSTM weights, x [T, B, I]
        T, B, _ = x.shape
        H = module.hidden_size
        dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[x.dtype]
        heads = getattr(inputs.get("ours"), "heads", 1)  # multi-head cases: our compact diagonal blocks
        size = H // heads
        w_ih = module.weight_ih_l0.detach().requires_grad_(mode != "fwd")
        blocks = inputs["ours"].weight_hh_l0 if heads > 1 else module.weight_hh_l0  # (4H, size): rows g, head, unit
        # [gates, heads, head_dim in, head_dim out]
        recurrent = blocks.detach().view(4, heads, size, size).transpose(2, 3).contiguous()
        recurrent.requires_grad_(mode != "fwd")
        bias = (module.bias_ih_l0 + module.bias_hh_l0).detach().view(4, heads, size).contiguous()
        bias.requires_grad_(mode != "fwd")

        def run():
            projected = (x.transpose(0, 1) @ w_ih.T).view(B, T, 4, heads, size)
            states, _ = flashrnn(projected, recurrent, bias, function="lstm", backend="triton_fused", dtype=dtype)
            return states[0]

        return _timed(run, mode)

    return make


# ---------------------------------------------------------------------------------------------


def peer_providers(case) -> dict:
    """Providers of the importable peers that do the work of ``case``."""
    providers = {}
    if case.family == "softmax" and case.op == "softmax" and importable("liger_kernel"):
        providers["liger"] = _liger_softmax(case.mode)
    if case.family == "rnn" and case.op == "lstm_layer" and importable("flashrnn"):
        providers["flashrnn"] = _flashrnn_lstm(case.mode)
    return providers


def with_peers(cases: list) -> list:
    """``cases`` with each importable peer added where it applies, on the GPU only."""
    result = []
    for case in cases:
        extra = peer_providers(case)
        if extra:
            case = dataclasses.replace(
                case, providers={**case.providers, **extra},
                provider_devices={**case.provider_devices, **{name: ("cuda",) for name in extra}})
        result.append(case)
    return result
