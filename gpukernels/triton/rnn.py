"""Recurrent layers in Triton: the input projection of all steps as one matmul, then one fused
kernel per time step, and back through time one fused pointwise kernel per step.

Forward step (``rnn_step_kernel``): a program owns a tile of batch rows and hidden units; it
multiplies the previous state by the rows of ``w_hh`` of every gate block of its hidden units
(``tl.dot``, fp32 accumulators), adds the precomputed input projection and the biases, and runs
the whole cell in the epilogue. It writes the output, the new state(s) and the gate activations
backward needs (the workspace layout of ``gpukernels.reference.rnn``), never pre-activations.
The original GRU (``linear_before_reset=False``) needs ``r`` of every hidden unit before its
``n`` matmul, so it takes two launches per step: cell GRU_RZ (gates r, z and r*h), then GRU_N.

Multi-head (block-diagonal) recurrent weights: the kernel reads the compact ``w_hh`` (G*H, HEAD),
HEAD = H // heads units a head, row stride HEAD. The grid's third axis is the head: a program's
tile of hidden units lies inside one head, and its K loop runs over that head's HEAD state columns
only, so a step does heads times fewer products and reads heads times fewer weight bytes. heads=1
is HEAD = H, one head: the dense layer, the same code. Heads narrower than one ``tl.dot`` tile
(HEAD < 16: the product's K tile would be mostly masked padding and each program's tile of units
mostly idle) take the dense expansion instead (``step_takes_heads``), formed by the driver only
when the persistent kernels (``rnn_persistent``, which take every head width compact) did not run.

Backward step (``rnn_backward_step_kernel``): the pointwise cell derivative for one step; the
recurrent gradient ``dgates @ w_hh`` is one cuBLAS ``addmm`` per step (with heads: one batched
matmul over the heads, gpukernels._rnn_driver.head_gradient, at every head size), and the weight
gradients are one matmul each over all steps at the end (with heads: one batched matmul giving
the compact gradient). Backward accumulates in fp32 whatever the storage.

Precision of the recurrent products: fp32 weights multiply in exact fp32 (``input_precision=
"ieee"``) unless torch allows TF32 for RNNs (``torch.backends.cudnn.rnn.fp32_precision``, or the
legacy ``torch.backends.cudnn.allow_tf32``: what cuDNN's RNN reads; torch's default allows it),
then in TF32 on the tensor cores (``TF32``; both operands rounded to nearest first,
``rnn_persistent.tf32_operand``, where a bare ``tl.dot`` would truncate them), read once per
layer call (``_launch.rnn_tf32_allowed``). That covers the products of these kernels (and the
persistent ones' ``tl.dot`` slices, up to their spill-free TF32 widths). The cuBLAS
matmuls around them (input projection, backward's ``dgates @ w_hh``, the weight gradients) are
torch's and follow torch's matmul flag (``torch.backends.cuda.matmul.fp32_precision``, default
exact fp32): cuBLAS's math mode is process-wide state with no per-call switch, and flipping it
around our calls would change it for every other thread's matmuls meanwhile. The CuPy backend
does not read torch's switch either: its products are all cuBLAS calls through CuPy, which
follow CuPy's own process-wide compute type (``cupy._core._routines_linalg.set_compute_type``,
plain fp32 by default), and it takes CuPy arrays that need not come from torch at all.

The time-step loops themselves are gpukernels._rnn_driver's (shared with the CuPy backend);
this module gives them torch arrays and the launches of these two kernels.
"""

from __future__ import annotations

import itertools
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from .. import _rnn_driver as driver
from .._dispatch import triton_interpreting
from .._rnn_driver import GATES, GRU, GRU_N, GRU_RZ, LSTM, RNN, WORKSPACE_BLOCKS  # noqa: F401 (public names)
from ._launch import TRITON_DTYPES, CompileCase, check_dtype, fresh, passed, rnn_tf32_allowed
from . import rnn_graph, rnn_persistent
from .activation import _tanh
from .rnn_cells import gru_cell, lstm_cell, rnn_cell
from .rnn_persistent import tf32_operand

# The cell codes (RNN covers tanh and relu, a runtime flag) come from the shared driver.
CELL_NAMES = {RNN: "rnn", LSTM: "lstm", GRU: "gru", GRU_RZ: "gru_rz", GRU_N: "gru_n"}

# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _gate_dot(acc, hk, w_ptr, gate, offs_k, offs_h, k_mask, h_mask, H, HEAD, DOT_F32: tl.constexpr,
              TF32: tl.constexpr):
    # (BLOCK_K, BLOCK_H) tile of w_hh^T for this gate block: element [k, j] = w[gate*H + j, k], k
    # a column of the unit's head (w_hh holds HEAD columns: its head's block; all H when heads=1)
    rows = (gate * H + offs_h[None, :]).to(tl.int64)
    w = tl.load(w_ptr + rows * HEAD + offs_k[:, None], mask=k_mask[:, None] & h_mask[None, :], other=0.0)
    if w.dtype == tl.float32:
        if TF32:  # torch allows TF32 for RNNs (rnn_tf32_allowed): tensor cores, as cuDNN would
            return tl.dot(tf32_operand(hk), tf32_operand(w), acc=acc, input_precision="tf32")
        return tl.dot(hk, w, acc=acc, input_precision="ieee")
    # Half-precision weights: the fp32 state enters the tensor-core product as two halves, its
    # rounding and the remainder, so the state is not rounded to fp16/bf16 at every step (that
    # rounding compounds over the sequence and through saturated tanh units in backward). The
    # second product costs little: the step is bound by reading w_hh, which both share.
    hi = hk.to(w.dtype)
    lo = (hk - hi.to(tl.float32)).to(w.dtype)
    if DOT_F32:
        # Triton's interpreter multiplies bfloat16 tiles wrongly: under it (only there) the
        # launcher sets DOT_F32 and the tiles, already rounded to bf16, go in as fp32.
        acc = tl.dot(hi.to(tl.float32), w.to(tl.float32), acc=acc, input_precision="ieee")
        return tl.dot(lo.to(tl.float32), w.to(tl.float32), acc=acc, input_precision="ieee")
    acc = tl.dot(hi, w, acc=acc)
    return tl.dot(lo, w, acc=acc)


@triton.jit
def _preact(acc, gx_ptr, gx_rows, b_ptr, gate, offs_h, tile_mask, h_mask, H):
    """acc (the recurrent product of gate block ``gate``) + input projection + b_hh."""
    a = acc + tl.load(gx_ptr + gx_rows + gate * H + offs_h[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    return a + tl.load(b_ptr + gate * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit(do_not_specialize=["t"])  # one binary for every step, not t == 1 and t % 16 == 0 apart
def rnn_step_kernel(
    gx_ptr, gx_stride, hin_ptr, hin_stride, hprev_ptr, hprev_stride, cprev_ptr, cprev_stride,
    w_ptr, b_ptr, peep_ptr, len_ptr, y_ptr, ws_ptr, ws_stride,
    t, B, H, HEAD, relu, coupled,
    CELL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_F32: tl.constexpr, TF32: tl.constexpr,
):
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    # Units of one head (axis 2; heads=1: HEAD = H and one head): the tile never straddles two.
    head_start = tl.program_id(2).to(tl.int64) * HEAD
    offs_u = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_h = head_start + offs_u
    b_mask, h_mask = offs_b < B, offs_u < HEAD
    tile_mask = b_mask[:, None] & h_mask[None, :]

    # Recurrent matmul of every gate block this cell needs, over the head's state columns.
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, HEAD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < HEAD
        hk = tl.load(hin_ptr + offs_b[:, None] * hin_stride + head_start + offs_k[None, :],
                     mask=b_mask[:, None] & k_mask[None, :], other=0.0)
        acc0 = _gate_dot(acc0, hk, w_ptr, 0, offs_k, offs_h, k_mask, h_mask, H, HEAD, DOT_F32, TF32)
        if CELL == 1 or CELL == 2 or CELL == 3:
            acc1 = _gate_dot(acc1, hk, w_ptr, 1, offs_k, offs_h, k_mask, h_mask, H, HEAD, DOT_F32, TF32)
        if CELL == 1 or CELL == 2:
            acc2 = _gate_dot(acc2, hk, w_ptr, 2, offs_k, offs_h, k_mask, h_mask, H, HEAD, DOT_F32, TF32)
        if CELL == 1:
            acc3 = _gate_dot(acc3, hk, w_ptr, 3, offs_k, offs_h, k_mask, h_mask, H, HEAD, DOT_F32, TF32)

    gx_rows = offs_b[:, None] * gx_stride
    ws_tile = ws_ptr + offs_b[:, None] * ws_stride + offs_h[None, :]
    h_prev = tl.load(hprev_ptr + offs_b[:, None] * hprev_stride + offs_h[None, :], mask=tile_mask,
                     other=0.0).to(tl.float32)
    active = (tl.load(len_ptr + offs_b, mask=b_mask, other=0) > t)[:, None]
    dtype = ws_ptr.dtype.element_ty

    if CELL == 0:  # RNN
        h_new = rnn_cell(_preact(acc0, gx_ptr, gx_rows, b_ptr, 0, offs_h, tile_mask, h_mask, H), h_prev, active,
                         relu, ws_tile, tile_mask)
    elif CELL == 1:  # LSTM, gates i, f, g, o
        c_prev = tl.load(cprev_ptr + offs_b[:, None] * cprev_stride + offs_h[None, :], mask=tile_mask,
                         other=0.0).to(tl.float32)
        h_new = lstm_cell(_preact(acc0, gx_ptr, gx_rows, b_ptr, 0, offs_h, tile_mask, h_mask, H),
                          _preact(acc1, gx_ptr, gx_rows, b_ptr, 1, offs_h, tile_mask, h_mask, H),
                          _preact(acc2, gx_ptr, gx_rows, b_ptr, 2, offs_h, tile_mask, h_mask, H),
                          _preact(acc3, gx_ptr, gx_rows, b_ptr, 3, offs_h, tile_mask, h_mask, H),
                          tl.load(peep_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :],
                          tl.load(peep_ptr + H + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :],
                          tl.load(peep_ptr + 2 * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :],
                          c_prev, h_prev, active, coupled, ws_tile, H, tile_mask)
    elif CELL == 2:  # GRU, gates r, z, n; m = W_hn h + b_hn is what backward needs of n
        m = acc2 + tl.load(b_ptr + 2 * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :]
        x_n = tl.load(gx_ptr + gx_rows + 2 * H + offs_h[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        h_new = gru_cell(_preact(acc0, gx_ptr, gx_rows, b_ptr, 0, offs_h, tile_mask, h_mask, H),
                         _preact(acc1, gx_ptr, gx_rows, b_ptr, 1, offs_h, tile_mask, h_mask, H), m, x_n, h_prev,
                         active, ws_tile, H, tile_mask)
    elif CELL == 3:  # GRU_RZ (original GRU, first launch): r, z and m = r*h for the n matmul
        r = tl.sigmoid(_preact(acc0, gx_ptr, gx_rows, b_ptr, 0, offs_h, tile_mask, h_mask, H))
        z = tl.sigmoid(_preact(acc1, gx_ptr, gx_rows, b_ptr, 1, offs_h, tile_mask, h_mask, H))
        tl.store(ws_tile, r.to(dtype), mask=tile_mask)
        tl.store(ws_tile + H, z.to(dtype), mask=tile_mask)
        tl.store(ws_tile + 3 * H, (r * h_prev).to(dtype), mask=tile_mask)
    else:  # GRU_N (second launch): hin is r*h, w_ptr/b_ptr/gx_ptr point at the n block
        n = _tanh(_preact(acc0, gx_ptr, gx_rows, b_ptr, 0, offs_h, tile_mask, h_mask, H))
        z = tl.load(ws_tile + H, mask=tile_mask, other=0.0).to(tl.float32)
        h_new = (1.0 - z) * n + z * h_prev
        tl.store(ws_tile + 2 * H, n.to(dtype), mask=tile_mask)
        tl.store(ws_tile + 4 * H, tl.where(active, h_new, h_prev).to(dtype), mask=tile_mask)
    y_tile = y_ptr + offs_b[:, None] * H + offs_h[None, :]
    if CELL != 3:
        tl.store(y_tile, tl.where(active, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit(do_not_specialize=["t"])
def rnn_backward_step_kernel(
    gy_ptr, dh_ptr, dc_ptr, ws_ptr, ws_stride, hprev_ptr, hprev_stride, cprev_ptr, cprev_stride,
    peep_ptr, len_ptr, drh_ptr, dgx_ptr, dgh_ptr, dhd_ptr, dcp_ptr,
    t, B, H, relu, coupled,
    CELL: tl.constexpr, BLOCK: tl.constexpr,
):
    """One step back: from dh (recurrent, fp32) + grad_y[t] and dc, the gradients of the gate
    pre-activations (dgx: of the input projection, dgh: of the recurrent one; fp32, G*H per row),
    dhd (the part of dh_prev not through w_hh) and dcp (dc_prev). Inactive steps pass dh, dc
    through and give zero gate gradients."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B * H
    b, j = offs // H, offs % H
    active = tl.load(len_ptr + b, mask=mask, other=0) > t
    ws = ws_ptr + b * ws_stride + j
    G = 4 if CELL == 1 else (3 if CELL >= 2 else 1)
    dg = b * (G * H) + j  # offset of gate block 0 in dgx/dgh
    dh_in = tl.load(dh_ptr + offs, mask=mask, other=0.0)
    if CELL != 3:
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dh = dh_in + tl.where(active, gy, 0.0)

    if CELL == 0:  # RNN
        h_new = tl.load(ws, mask=mask, other=0.0).to(tl.float32)
        da = tl.where(relu != 0, tl.where(h_new > 0, dh, 0.0), dh * ((1.0 - h_new) * (1.0 + h_new)))
        tl.store(dgx_ptr + dg, tl.where(active, da, 0.0), mask=mask)
        tl.store(dhd_ptr + offs, tl.where(active, 0.0, dh_in), mask=mask)
    elif CELL == 1:  # LSTM
        dc_in = tl.load(dc_ptr + offs, mask=mask, other=0.0)
        i = tl.load(ws, mask=mask, other=0.0).to(tl.float32)
        f = tl.load(ws + H, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(ws + 2 * H, mask=mask, other=0.0).to(tl.float32)
        o = tl.load(ws + 3 * H, mask=mask, other=0.0).to(tl.float32)
        c_new = tl.load(ws + 4 * H, mask=mask, other=0.0).to(tl.float32)
        c_prev = tl.load(cprev_ptr + b * cprev_stride + j, mask=mask, other=0.0).to(tl.float32)
        tc = _tanh(c_new)
        da_o = dh * tc * o * (1.0 - o)
        dc = dc_in + dh * o * ((1.0 - tc) * (1.0 + tc))
        dc += da_o * tl.load(peep_ptr + 2 * H + j, mask=mask, other=0.0).to(tl.float32)
        da_g = dc * i * ((1.0 - g) * (1.0 + g))
        di = dc * g
        di = tl.where(coupled != 0, di - dc * c_prev, di)  # f = 1 - i
        da_f = tl.where(coupled != 0, 0.0, dc * c_prev * f * (1.0 - f))
        da_i = di * i * (1.0 - i)
        dc_prev = dc * f
        dc_prev += da_i * tl.load(peep_ptr + j, mask=mask, other=0.0).to(tl.float32)
        dc_prev += da_f * tl.load(peep_ptr + H + j, mask=mask, other=0.0).to(tl.float32)
        tl.store(dgx_ptr + dg, tl.where(active, da_i, 0.0), mask=mask)
        tl.store(dgx_ptr + dg + H, tl.where(active, da_f, 0.0), mask=mask)
        tl.store(dgx_ptr + dg + 2 * H, tl.where(active, da_g, 0.0), mask=mask)
        tl.store(dgx_ptr + dg + 3 * H, tl.where(active, da_o, 0.0), mask=mask)
        tl.store(dhd_ptr + offs, tl.where(active, 0.0, dh_in), mask=mask)
        tl.store(dcp_ptr + offs, tl.where(active, dc_prev, dc_in), mask=mask)
    elif CELL == 3:  # GRU_RZ (original GRU, second launch): drh = d(r*h) from da_n @ W_hn
        drh = tl.load(drh_ptr + offs, mask=mask, other=0.0)
        r = tl.load(ws, mask=mask, other=0.0).to(tl.float32)
        h_prev = tl.load(hprev_ptr + b * hprev_stride + j, mask=mask, other=0.0).to(tl.float32)
        da_r = tl.where(active, drh * h_prev * r * (1.0 - r), 0.0)
        tl.store(dgx_ptr + dg, da_r, mask=mask)
        tl.store(dgh_ptr + dg, da_r, mask=mask)
        tl.store(dhd_ptr + offs, dh_in + tl.where(active, drh * r, 0.0), mask=mask)
    else:  # GRU (CELL 2) and the original GRU's first launch (CELL 4): the z and n gates
        z = tl.load(ws + H, mask=mask, other=0.0).to(tl.float32)
        n = tl.load(ws + 2 * H, mask=mask, other=0.0).to(tl.float32)
        h_prev = tl.load(hprev_ptr + b * hprev_stride + j, mask=mask, other=0.0).to(tl.float32)
        da_z = tl.where(active, dh * (h_prev - n) * z * (1.0 - z), 0.0)
        da_n = tl.where(active, dh * (1.0 - z) * ((1.0 - n) * (1.0 + n)), 0.0)
        tl.store(dgx_ptr + dg + H, da_z, mask=mask)
        tl.store(dgx_ptr + dg + 2 * H, da_n, mask=mask)
        tl.store(dgh_ptr + dg + H, da_z, mask=mask)
        tl.store(dhd_ptr + offs, tl.where(active, dh * z, dh_in), mask=mask)
        if CELL == 2:
            r = tl.load(ws, mask=mask, other=0.0).to(tl.float32)
            m = tl.load(ws + 3 * H, mask=mask, other=0.0).to(tl.float32)
            da_r = da_n * m * r * (1.0 - r)
            tl.store(dgx_ptr + dg, da_r, mask=mask)
            tl.store(dgh_ptr + dg, da_r, mask=mask)
            tl.store(dgh_ptr + dg + 2 * H, da_n * r, mask=mask)
        else:
            tl.store(dgh_ptr + dg + 2 * H, da_n, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launch heuristics (the compile gate enumerates exactly these)


class StepTile(NamedTuple):
    block_b: int
    block_h: int
    block_k: int
    num_warps: int


# Small batches waste nothing with 16-row tiles; larger ones reuse each w_hh tile over 64 rows.
# The hidden-unit and reduction widths are the largest with which every cell builds without a
# spill in the worst launch (ragged sizes, unaligned slices) under Triton 3.6 and 3.7 (the
# compile gate): 16-row tiles take the recurrent product 16 units of h at a time, 64-row tiles
# cover 16 hidden units with 8 warps (32 spill in the LSTM and GRU cells).
STEP_TILES = (StepTile(16, 32, 16, 4), StepTile(64, 16, 32, 8))
BACKWARD_BLOCK, BACKWARD_WARPS = 512, 4


def step_tile(batch: int) -> StepTile:
    return STEP_TILES[0] if batch <= 16 else STEP_TILES[1]


# The narrowest head the step kernel multiplies from the compact weight: tl.dot's smallest K
# tile. A narrower head would leave most of every K tile masked and most of each program's units
# idle (a head of 8 fills a quarter of a 32-unit tile), so such layers get the dense expansion.
MIN_STEP_HEAD = 16


def step_takes_heads(size: int) -> bool:
    return size >= MIN_STEP_HEAD


# ---------------------------------------------------------------------------------------------
# Host code: the sequence loops are gpukernels._rnn_driver's; this is their torch backend.


def _check_dtypes(**tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is not None:
            check_dtype(tensor, name)


class _TorchBackend:
    """The driver's backend: torch tensors on ``device``, cuBLAS for the products outside the
    kernels, and the two Triton step kernels (looked up at launch, so tests can wrap them)."""

    f32 = torch.float32

    def __init__(self, device):
        self.device = device
        # Read once per layer call (every step of a call multiplies alike; a CUDA graph of the
        # call is keyed on the same reading, rnn_graph.layer_key).
        self.tf32 = rnn_tf32_allowed()

    def tf32_for(self, w) -> bool:
        """TF32 recurrent products for weights ``w``: fp32 weights where torch allows TF32 for
        RNNs. fp16/bf16 weights are unaffected (they already meet the state on tensor cores,
        the state split in two halves so it is not rounded)."""
        return self.tf32 and w.dtype == torch.float32

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype, device=self.device)

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def as_f32(self, a):
        return a.to(torch.float32)

    def contiguous(self, a):
        return a.contiguous()

    def copy(self, a):
        return a.clone()

    def lengths(self, lengths, T: int, B: int):
        return torch.tensor(lengths if lengths is not None else [T] * B, dtype=torch.int32, device=self.device)

    def concat(self, parts):
        return torch.cat(parts, dim=0)

    def stack(self, parts):
        return torch.stack(parts)

    def input_projection(self, x2d, w_ih, b_ih):
        # In fp32 whatever the storage: a half-precision result would round every gate
        # pre-activation once more before the cell (the fp16/bf16 errors of the H200 run at
        # H=257). b_ih folds into the same GEMM.
        x2d, w_ih = x2d.to(torch.float32), w_ih.to(torch.float32)
        return torch.addmm(b_ih.to(torch.float32), x2d, w_ih.t()) if b_ih is not None else x2d @ w_ih.t()

    def step_weights(self, w_hh):
        return w_hh.contiguous()  # the step kernel reads rows of w_hh with stride H

    def matmul_into(self, a, b, out) -> None:
        torch.mm(a, b, out=out)

    def addmm(self, c, a, b):
        return torch.addmm(c, a, b)

    def permute(self, a, dims):
        return a.permute(dims)

    def step_takes_heads(self, size: int) -> bool:
        return step_takes_heads(size)

    def forward_step(self, code: int, s) -> None:
        tile = step_tile(s.B)
        head = s.H // s.heads
        grid = (triton.cdiv(s.B, tile.block_b), triton.cdiv(head, tile.block_h), s.heads)
        rnn_step_kernel[grid](
            s.gx, s.gx_stride, s.hin, s.hin.stride(0), s.h, s.h.stride(0), s.c, s.c.stride(0), s.w, s.b, s.peep,
            s.lens, s.y, s.ws, s.ws_stride, s.t, s.B, s.H, head, s.relu, s.coupled,
            CELL=code, BLOCK_B=tile.block_b, BLOCK_H=tile.block_h, BLOCK_K=tile.block_k,
            DOT_F32=s.storage.dtype == torch.bfloat16 and triton_interpreting(), TF32=self.tf32_for(s.w),
            num_warps=tile.num_warps,
        )

    def forward_layer(self, s, **layer) -> bool:
        """The whole time loop in one persistent launch where rnn_persistent's launch rule allows;
        with heads it takes the compact weight (per-head slices), nothing dense is formed."""
        return rnn_persistent.layer_forward(s, interpreting=triton_interpreting(), tf32=self.tf32_for(s.w), **layer)

    def backward_layer(self, s, *, w, heads: int, **layer) -> bool:
        return rnn_persistent.layer_backward(s, w=w, heads=heads, interpreting=triton_interpreting(),
                                             tf32=self.tf32_for(w), **layer)

    def backward_step(self, code: int, s) -> None:
        rnn_backward_step_kernel[(triton.cdiv(s.B * s.H, BACKWARD_BLOCK),)](
            s.gy, s.dh, s.dc, s.ws, s.ws_stride, s.h_prev, s.h_prev.stride(0), s.c_prev, s.c_prev.stride(0),
            s.peep, s.lens, s.drh, s.dgx, s.dgh, s.dhd, s.dcp, s.t, s.B, s.H, s.relu, s.coupled,
            CELL=code, BLOCK=BACKWARD_BLOCK, num_warps=BACKWARD_WARPS,
        )


def layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, cell: str, reverse: bool = False, lengths=None,
                  coupled: bool = False, linear_before_reset: bool = True, heads: int = 1):
    _check_dtypes(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_peep=w_peep)
    x, h0, w_ih, w_hh = (t.contiguous() for t in (x, h0, w_ih, w_hh))
    c0 = None if c0 is None else c0.contiguous()
    arrays = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
    options = dict(cell=cell, reverse=reverse, coupled=coupled, linear_before_reset=linear_before_reset, heads=heads)
    if rnn_graph.wanted(arrays):  # GPUKERNELS_RNN_CUDA_GRAPH=1: the whole call as one CUDA graph
        return rnn_graph.layer_call(driver.layer_forward, _TorchBackend(x.device), arrays, lengths, options)
    return driver.layer_forward(_TorchBackend(x.device), *arrays, lengths=lengths, **options)


def layer_backward(grad_y, grad_h_n, grad_c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, cell: str,
                   reverse: bool = False, lengths=None, coupled: bool = False, linear_before_reset: bool = True,
                   heads: int = 1):
    _check_dtypes(grad_y=grad_y, x=x, h0=h0, w_hh=w_hh)
    arrays = (grad_y, grad_h_n, grad_c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
    options = dict(cell=cell, reverse=reverse, coupled=coupled, linear_before_reset=linear_before_reset, heads=heads)
    if rnn_graph.wanted(arrays):
        return rnn_graph.layer_call(driver.layer_backward, _TorchBackend(x.device), arrays, lengths, options)
    return driver.layer_backward(_TorchBackend(x.device), *arrays, lengths=lengths, **options)


# ---------------------------------------------------------------------------------------------
# Compile gate


# Representative launches, one step past the first: "typical" has a batch that fills its tile and
# H = 256, so every stride and every per-step slice of y, gx and the workspace is 16-aligned;
# "worst" has a ragged batch and H, so strides are ragged and the slices of step t start off
# alignment, as do the caller's weights (``contiguous()`` passes views through). The cell flags
# are ints: a launch with 1 compiles them in as constants, one with 0 keeps the runtime test.
# "heads" is a multi-head layer whose H is 16-aligned but whose head (HEAD = 24 units) is not:
# the one specialisation of HEAD the other two do not build (there HEAD = H).
_GATE_H = {"typical": 256, "worst": 255, "heads": 240}
_GATE_HEAD = {"typical": 256, "worst": 255, "heads": 24}
_GATE_BATCH = {("typical", 0): 16, ("typical", 1): 64, ("worst", 0): 13, ("worst", 1): 37,
               ("heads", 0): 16, ("heads", 1): 64}  # per tile
_CELL_FLAG = {RNN: "relu", LSTM: "coupled"}  # the runtime flag each cell reads
_LAYER_CELL = {RNN: "rnn_tanh", LSTM: "lstm", GRU: "gru", GRU_RZ: "gru", GRU_N: "gru"}  # for gate and workspace widths


def _flag_values(code: int, launch: str) -> list[dict[str, int]]:
    """The flag arguments of the launches of cell ``code``: both values of the flag the cell reads
    in typical launches, the runtime 0 alone in the others."""
    flags = {"relu": 0, "coupled": 0}
    if code in _CELL_FLAG and launch == "typical":
        return [flags, {**flags, _CELL_FLAG[code]: 1}]
    return [flags]


def _step_args(code: int, tdtype: str, launch: str, batch: int, flags: dict) -> dict:
    """What ``_TorchBackend.forward_step`` passes at a step t > 0 (the state is a workspace slice)."""
    H, aligned = _GATE_H[launch], launch != "worst"
    G, K = GATES[_LAYER_CELL[code]], WORKSPACE_BLOCKS[_LAYER_CELL[code]]
    state = passed("fp32", aligned)  # h (and c) of step t - 1: slices of the workspace
    return dict(gx_ptr=passed("fp32", aligned), gx_stride=G * H, hin_ptr=state, hin_stride=K * H,
                hprev_ptr=state, hprev_stride=K * H, cprev_ptr=state, cprev_stride=K * H,
                w_ptr=passed(tdtype, aligned), b_ptr=passed(tdtype, aligned), peep_ptr=passed(tdtype, aligned),
                len_ptr=fresh("i32"), y_ptr=passed(tdtype, aligned), ws_ptr=passed("fp32", aligned),
                ws_stride=K * H, t=1, B=batch, H=H, HEAD=_GATE_HEAD[launch], **flags)


def _backward_step_args(code: int, tdtype: str, launch: str, flags: dict) -> dict:
    """What ``_TorchBackend.backward_step`` passes at a step t > 0."""
    H, aligned = _GATE_H[launch], launch == "typical"
    K = WORKSPACE_BLOCKS[_LAYER_CELL[code]]
    return dict(gy_ptr=passed(tdtype, aligned), dh_ptr=fresh("fp32"), dc_ptr=fresh("fp32"),
                ws_ptr=passed("fp32", aligned), ws_stride=K * H, hprev_ptr=passed("fp32", aligned),
                hprev_stride=K * H, cprev_ptr=passed("fp32", aligned), cprev_stride=K * H,
                peep_ptr=passed(tdtype, aligned), len_ptr=fresh("i32"), drh_ptr=fresh("fp32"),
                dgx_ptr=passed("fp32", aligned), dgh_ptr=passed("fp32", aligned), dhd_ptr=fresh("fp32"),
                dcp_ptr=fresh("fp32"), t=1, B=_GATE_BATCH[(launch, 1)], H=H, **flags)


def _flag_tags(flags: dict) -> dict[str, str]:
    return {name: str(value) for name, value in flags.items() if value}


def _tf32_values(dtype: str) -> tuple[bool, ...]:
    """The recurrent-product precisions a step launch can take: fp32 weights multiply in TF32
    where torch allows it for RNNs (``_TorchBackend.tf32_for``), other dtypes never."""
    return (False, True) if dtype == "fp32" else (False,)


def _precision_tag(tf32: bool) -> dict[str, str]:
    return {"precision": "tf32"} if tf32 else {}


def compile_cases() -> Iterator[CompileCase]:
    """Both kernels, every cell code, every storage dtype, every tile the heuristic picks, in the
    typical and the worst launch; the step kernel also in the multi-head one, and for fp32
    weights also with TF32 products."""
    for dtype, name in TRITON_DTYPES.items():
        for code, cell_name in CELL_NAMES.items():
            for launch in ("typical", "worst", "heads"):
                for flags, tf32 in itertools.product(_flag_values(code, launch), _tf32_values(name)):
                    for index, tile in enumerate(STEP_TILES):
                        batch = _GATE_BATCH[(launch, index)]
                        assert step_tile(batch) == tile  # the batch picks this tile at run time
                        yield CompileCase(
                            name=f"rnn_step[{cell_name}]", kernel=rnn_step_kernel,
                            args={**_step_args(code, name, launch, batch, flags), "CELL": code,
                                  "BLOCK_B": tile.block_b, "BLOCK_H": tile.block_h, "BLOCK_K": tile.block_k,
                                  "DOT_F32": False, "TF32": tf32},
                            num_warps=tile.num_warps,
                            tags={"dtype": name, "block_b": str(tile.block_b), "block_h": str(tile.block_h),
                                  "block_k": str(tile.block_k), "launch": launch, **_flag_tags(flags),
                                  **_precision_tag(tf32)},
                        )
                    if launch == "heads" or tf32:  # the backward step kernel has no HEAD and no product
                        continue
                    yield CompileCase(
                        name=f"rnn_backward_step[{cell_name}]", kernel=rnn_backward_step_kernel,
                        args={**_backward_step_args(code, name, launch, flags), "CELL": code, "BLOCK": BACKWARD_BLOCK},
                        num_warps=BACKWARD_WARPS,
                        tags={"dtype": name, "block": str(BACKWARD_BLOCK), "launch": launch, **_flag_tags(flags)},
                    )
