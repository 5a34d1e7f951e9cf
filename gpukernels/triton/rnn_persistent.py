"""Persistent recurrent layers in Triton: one launch runs a whole layer direction.

Why: the per-step path (``gpukernels.triton.rnn``) launches a kernel per time step (two in
backward, plus a cuBLAS product) and reads all of ``w_hh`` from memory at every step. Here each
program owns a slice of ``BLOCK_H`` hidden units, loads the rows of ``w_hh`` of its slice (every
gate block) once, before the time loop, and steps through time; the programs exchange the state
through global memory (the workspace, which backward needs anyway) and wait for each other once
per step at a grid-wide barrier.

The barrier is a monotone integer counter: at step ``s`` every program adds 1 and spins until the
counter reaches ``(s + 1) * programs``. The phase (the step) is in the target, so the barrier is
reusable every step without a reset (a reset would race with programs already arriving at the
next phase). It only works when every program of the grid is resident at once, which
``plan_launch`` checks against the compiled kernel's registers and shared memory and the
device's SM count before each launch (and the launch is a cooperative one, so the driver refuses
a grid that cannot be resident rather than letting it hang); when that does not hold, the layer
takes the per-step path.

The recurrent products are exact fp32 ones (``input_precision="ieee"``) whatever the storage
dtype: the slice is converted to fp32 when it is loaded, and the fp32 state is never rounded.
One exception, torch's: fp32 weights where torch allows TF32 for RNNs
(``torch.backends.cudnn.rnn.fp32_precision``, read per call by gpukernels.triton.rnn) take the
``tl.dot`` slices' products in TF32 on the tensor cores (``TF32``), as cuDNN would, up to the
widths whose TF32 builds do not spill (``TF32_MAX_WIDTH``); wider slices, and the wide row-wise
ones (no tensor-core product), stay exact fp32 either way.
How far a slice can stay on chip without a spill is measured by the compile gate, not assumed:
``SLICE_WARPS``. Two kinds of slice:

* ``tl.dot`` slices (up to H=512 RNN, 256 LSTM, 128 GRU): 16 hidden units per program, products
  of 16 batch rows at a time; the slice is laid out as the operand of a 16 x 16 product, and the
  wider ones spill (compile gate).
* wide row-wise slices (``ROWWISE``, up to H=1024 for every cell; ``ROWWISE_SLICES``): 8 hidden
  units per program (4 for the fp32 LSTM at 1024), read once in the storage dtype and spread
  over all the program's threads, one element in one thread (the compiler widens it to fp32
  once, before the time loop, so it takes fp32 registers whatever the dtype); the products go
  one batch row at a time as fp32 sums over the reduction axis (the row times the slice, element
  by element, then a reduction across the warps). Narrower slices make more programs; the launch
  rule decides whether the device holds them all (LSTM H=1024: 128 programs, one per SM, on an
  H100/H200's 132 SMs, not on an A100's 108).

The same kernels run with a grid of one program that loops over all slices (``SLICE_LOOP``):
then the barrier is skipped (nothing to wait for) and ``w_hh`` is read per slice and step. That
is the path Triton's interpreter runs (it runs programs one after another, a spin would hang) and
the tests check against the reference; the barrier protocol itself is checked by a host-side
simulation of interleaved programs (tests/test_rnn_persistent.py).

Backward, per step: phase 1 (each program, its own hidden units): the pointwise cell derivative
from dh (own units), grad_y and dc, giving the gate gradients ``dgh[t]`` of its units; barrier;
phase 2 (each program, its own columns of ``w_hh``, the same slice): ``dh_prev[:, slice] =
dhd[:, slice] + dgh[t] @ w_hh[:, slice]``, the recurrent gradient product fused in. dh, dc and
dhd never leave their program's slice, so one barrier per step is enough. The weight gradients
stay one matmul each over all steps after the loop (gpukernels._rnn_driver), deterministic and
without atomics.

Covered: rnn_tanh, rnn_relu, lstm (peepholes, coupled gates), gru with ``linear_before_reset``
(PyTorch's), up to H=1024 in fp32, fp16 and bf16 (with heads: heads up to 1024 units wide). The
original GRU needs ``r`` of every unit before its ``n`` product (a second barrier per step) and
keeps the per-step path.

Multi-head weights (``heads > 1``, HEAD = H // heads units a head): the kernels take the compact
``w_hh`` (G*H, HEAD) and cut the slices head by head, so a slice never straddles two heads. A
program keeps only its units' rows over its head's HEAD columns (backward: its columns over its
head's rows), and per step reads only its head's HEAD state columns (backward: its head's gate
gradients): on-chip weight, products and exchanged bytes all drop by ``heads``, and the tile is
that of a layer one head wide (``slice_tile``), so layers past H=1024 run persistent when their
heads are narrow enough. Where BLOCK_H does not divide HEAD, a head's last slice is masked (like
the step kernel's tiles, which never straddle heads either): one partly idle program per head,
against the dense expansion's ``heads`` times the products, registers and exchange; so no head
width takes the dense expansion here (heads narrower than one slice included: a program then
holds one head). The grid is (slices of a head, heads): the head is the second program id, never
divided out of a flat index. Multi-head launches compile with ``PER_HEAD`` (heads=1 compiles
without it, the dense layer's build unchanged); both are in the compile gate, and the few widths
whose multi-head build spills (``PER_HEAD_SPILLS``) are skipped for the next one. ``traffic``: the
bytes model (w_hh bytes per sequence, exchange bytes per step) with heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import triton
import triton.language as tl

from .._rnn_driver import GATES, GRU, LSTM, RNN
from ._launch import TRITON_DTYPES, CompileCase, environment_choice, fresh, passed
from .activation import _tanh
from .rnn_cells import lstm_cell, rnn_cell

# ---------------------------------------------------------------------------------------------
# Kernel pieces

# One binary per cell, dtype and tile: no argument is specialised on its value (1, multiples of
# 16) or on its pointer's alignment. The time loop runs on products of on-chip tiles, which such
# hints do not speed up, and it keeps the compile gate to one build per configuration.
_RUNTIME_ONLY = ["gx_ptr", "h0_ptr", "c0_ptr", "w_ptr", "b_ptr", "peep_ptr", "len_ptr", "y_ptr", "ws_ptr", "bar_ptr",
                 "gy_ptr", "dh_ptr", "dc_ptr", "dgx_ptr", "dgh_ptr", "T", "B", "H", "HEAD", "relu", "coupled",
                 "reverse"]


@triton.jit
def _grid_barrier(bar_ptr, phase, programs):
    """Wait until every program has arrived ``phase`` times. A no-op for a single program."""
    # Every thread of this program has stored its part of the step (also with one program: the
    # next phase reads elements other threads of the program wrote).
    tl.debug_barrier()
    if programs > 1:
        # Release: this program's stores are visible before the count that announces them.
        tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")  # integer atomic: the arrival count
        arrived = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")  # integer atomic: reads the count
        while arrived < phase * programs:
            arrived = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")  # integer atomic: reads the count
        tl.debug_barrier()


@triton.jit
def tf32_operand(x):
    """fp32 ``x`` rounded to TF32 (10 mantissa bits), to the nearest, ties away from zero: what
    cuBLAS and cuDNN do (``cvt.rna.tf32.f32``) before a TF32 product. ``tl.dot`` hands the tensor
    cores its fp32 registers unconverted, and they drop the low 13 bits: truncation, a bias toward
    zero of about 2^-11 per operand that compounds through a recurrence (Triton issue 4574). Plain
    integer operations on the bits (adding half a TF32 unit in the last place carries into the
    kept bits exactly when rounding up), so Triton's interpreter runs it too: there, where
    ``tl.dot`` ignores its precision, the products of rounded operands are TF32's numbers.
    Infinities and NaNs stay what they are; the largest finite values round up to infinity, as
    ``cvt.rna`` does."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _state_dot(acc, state, w, ROWWISE: tl.constexpr, TF32: tl.constexpr):
    """acc + state @ w, fp32 products (FMA, not tensor cores), so the fp32 state is never
    rounded to the storage dtype, whatever it is. The step is bound by the latency of the step
    loop, not by these few products. TF32 (fp32 weights where torch allows TF32 for RNNs; the
    ``tl.dot`` slices only): the products on the tensor cores in TF32, as cuDNN would.

    ROWWISE (the wide slices, ``state`` one batch row): ``w`` (storage dtype) stays in the layout
    it was loaded in, spread over every thread of the program, widened to fp32 (exact); the
    product is a sum over the reduction axis, which crosses the program's warps."""
    if ROWWISE:
        acc = acc + tl.sum(state[:, :, None] * w[None, :, :].to(tl.float32), axis=1)
    elif TF32:  # w: rounded to TF32 already, once, by _weight_tiles
        acc = tl.dot(tf32_operand(state), w, acc=acc, input_precision="tf32")
    else:
        acc = tl.dot(state, w, acc=acc, input_precision="ieee")
    return acc


@triton.jit
def _slice_units(head, index, HEAD, BLOCK_H: tl.constexpr, PER_HEAD: tl.constexpr):
    """The hidden units of slice ``index`` of head ``head`` and the head's first unit. Slices are
    cut head by head (a head's last slice is masked where BLOCK_H does not divide HEAD: its units
    are those below ``head_start + HEAD``), so a slice never straddles two heads. The head comes
    from the grid's second axis (or the slice loop), never from dividing a flat slice index: that
    runtime division cost the builds their last registers (8-40 spilled bytes, compile gate). The
    callers recompute the mask where they use it rather than take it as a value, for the same
    reason (a vector of predicates held across the time loop spills). Without PER_HEAD (heads=1:
    HEAD is H, one head) the head offset is the constant 0: the dense layer's build unchanged."""
    if PER_HEAD:
        head_start = head * HEAD
    else:
        head_start = 0
    return head_start + index * BLOCK_H + tl.arange(0, BLOCK_H), head_start


@triton.jit
def _rows_tile(w_ptr, gate, offs_h, head_start, H, HEAD, HP: tl.constexpr):
    """(HP, BLOCK_H): element [k, j] = w[gate*H + j, k], the rows of hidden units ``offs_h`` over
    their head's HEAD columns (the compact w, row stride HEAD; forward: h_head @ w_g^T restricted
    to the slice)."""
    offs_k = tl.arange(0, HP)
    rows = (gate * H + offs_h[None, :]).to(tl.int64)
    h_mask = offs_h < head_start + HEAD
    return tl.load(w_ptr + rows * HEAD + offs_k[:, None], mask=(offs_k[:, None] < HEAD) & h_mask[None, :], other=0.0)


@triton.jit
def _columns_tile(w_ptr, gate, offs_h, head_start, H, HEAD, HP: tl.constexpr):
    """(HP, BLOCK_H): element [j, k] = w[gate*H + head_start + j, k - head_start], the columns
    ``offs_h`` of gate block ``gate``, over the rows of their head's units only (backward:
    dgates_g @ w_g restricted to the slice; the other heads' rows hold zeros of the dense matrix)."""
    offs_j = tl.arange(0, HP)
    rows = (gate * H + head_start + offs_j[:, None]).to(tl.int64)
    h_mask = offs_h < head_start + HEAD
    return tl.load(w_ptr + rows * HEAD + (offs_h - head_start)[None, :],
                   mask=(offs_j[:, None] < HEAD) & h_mask[None, :], other=0.0)


@triton.jit
def _weight_tiles(w_ptr, offs_h, head_start, H, HEAD, CELL: tl.constexpr, COLUMNS: tl.constexpr,
                  HP: tl.constexpr, ROWWISE: tl.constexpr, TF32: tl.constexpr):
    """The tiles of every gate block a cell uses (the unused ones alias gate 0 and are never read):
    fp32 for ``tl.dot`` (rounded to TF32 once, here, for TF32 products); as loaded (storage dtype)
    for the row-wise products, which widen them."""
    if COLUMNS:
        w0 = _columns_tile(w_ptr, 0, offs_h, head_start, H, HEAD, HP)
    else:
        w0 = _rows_tile(w_ptr, 0, offs_h, head_start, H, HEAD, HP)
    w1, w2, w3 = w0, w0, w0
    if CELL != 0:
        if COLUMNS:
            w1 = _columns_tile(w_ptr, 1, offs_h, head_start, H, HEAD, HP)
            w2 = _columns_tile(w_ptr, 2, offs_h, head_start, H, HEAD, HP)
        else:
            w1 = _rows_tile(w_ptr, 1, offs_h, head_start, H, HEAD, HP)
            w2 = _rows_tile(w_ptr, 2, offs_h, head_start, H, HEAD, HP)
    if CELL == 1:
        if COLUMNS:
            w3 = _columns_tile(w_ptr, 3, offs_h, head_start, H, HEAD, HP)
        else:
            w3 = _rows_tile(w_ptr, 3, offs_h, head_start, H, HEAD, HP)
    if not ROWWISE:
        w0, w1, w2, w3 = w0.to(tl.float32), w1.to(tl.float32), w2.to(tl.float32), w3.to(tl.float32)
    if TF32:
        w0, w1, w2, w3 = tf32_operand(w0), tf32_operand(w1), tf32_operand(w2), tf32_operand(w3)
    return w0, w1, w2, w3


@triton.jit
def _previous_state(t_prev, h0_ptr, c0_ptr, ws_ptr, B, H, K: tl.constexpr):
    """Where step t - 1's h and c rows start, and their row stride: the h (and c) blocks of its
    workspace, or h0/c0 before the first step."""
    if t_prev < 0:
        h_in = h0_ptr
        c_in = c0_ptr
        in_stride = H
    else:
        h_in = ws_ptr + t_prev.to(tl.int64) * B * K * H + (K - 1) * H
        c_in = ws_ptr + t_prev.to(tl.int64) * B * K * H + 4 * H
        in_stride = K * H
    return h_in, c_in, in_stride


@triton.jit
def _gate_vectors(v_ptr, offs_h, h_mask, H, COUNT: tl.constexpr):
    """Blocks 0..COUNT-1 of a (COUNT*H,) vector at the hidden units ``offs_h`` (where ``h_mask``)
    as fp32 rows; the blocks past COUNT are zeros (never read from memory)."""
    v0 = tl.zeros(offs_h.shape, dtype=tl.float32)
    v1, v2, v3 = v0, v0, v0
    if COUNT > 0:
        v0 = tl.load(v_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    if COUNT > 1:
        v1 = tl.load(v_ptr + H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    if COUNT > 2:
        v2 = tl.load(v_ptr + 2 * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    if COUNT > 3:
        v3 = tl.load(v_ptr + 3 * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    return v0[None, :], v1[None, :], v2[None, :], v3[None, :]


@triton.jit
def _step_index(s, T, reverse):
    """The time index of loop step ``s`` and that of the step before it (-1 at the first)."""
    t = tl.where(reverse != 0, T - 1 - s, s)
    t_prev = tl.where(s == 0, -1, tl.where(reverse != 0, t + 1, t - 1))
    return t, t_prev


@triton.jit
def _forward_slice(t, t_prev, gx_ptr, h0_ptr, c0_ptr, w0, w1, w2, w3, b_ptr, peep_ptr, len_ptr, y_ptr, ws_ptr,
                   B, H, HEAD, relu, coupled, offs_h, head_start, CELL: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_H: tl.constexpr, HP: tl.constexpr, ROWWISE: tl.constexpr, TF32: tl.constexpr):
    """Step ``t`` of the hidden units ``offs_h``, every batch row: the same cell as the per-step
    kernel, writing y[t] and the workspace of step t (layout of gpukernels.reference.rnn). The
    product reads only the HEAD state columns of the slice's head (all H when heads=1)."""
    G: tl.constexpr = 4 if CELL == 1 else (3 if CELL == 2 else 1)
    K: tl.constexpr = 6 if CELL == 1 else (5 if CELL == 2 else 1)
    h_mask = offs_h < head_start + HEAD
    offs_k = tl.arange(0, HP)
    k_mask = offs_k < HEAD
    b0, b1, b2, b3 = _gate_vectors(b_ptr, offs_h, h_mask, H, G)
    p_i, p_f, p_o, _ = _gate_vectors(peep_ptr, offs_h, h_mask, H, 3 if CELL == 1 else 0)
    h_in, c_in, in_stride = _previous_state(t_prev, h0_ptr, c0_ptr, ws_ptr, B, H, K)
    ws_t = ws_ptr + t.to(tl.int64) * B * K * H
    gx_t = gx_ptr + t.to(tl.int64) * B * G * H
    y_t = y_ptr + t.to(tl.int64) * B * H
    for b_start in range(0, B, BLOCK_B):
        offs_b = b_start + tl.arange(0, BLOCK_B).to(tl.int64)
        b_mask = offs_b < B
        tile_mask = b_mask[:, None] & h_mask[None, :]
        # .cg: other programs wrote this state; read it from L2, never from a stale L1 line.
        state = tl.load(h_in + offs_b[:, None] * in_stride + head_start + offs_k[None, :],
                        mask=b_mask[:, None] & k_mask[None, :], other=0.0, cache_modifier=".cg")
        h_prev = tl.load(h_in + offs_b[:, None] * in_stride + offs_h[None, :], mask=tile_mask, other=0.0,
                         cache_modifier=".cg")
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        gx_tile = gx_t + offs_b[:, None] * (G * H) + offs_h[None, :]
        ws_tile = ws_t + offs_b[:, None] * (K * H) + offs_h[None, :]
        active = (tl.load(len_ptr + offs_b, mask=b_mask, other=0) > t)[:, None]
        a0 = _state_dot(acc, state, w0, ROWWISE, TF32) + tl.load(gx_tile, mask=tile_mask, other=0.0) + b0
        if CELL == 0:  # RNN
            h_new = rnn_cell(a0, h_prev, active, relu, ws_tile, tile_mask)
        elif CELL == 1:  # LSTM, gates i, f, g, o
            c_prev = tl.load(c_in + offs_b[:, None] * in_stride + offs_h[None, :], mask=tile_mask, other=0.0,
                             cache_modifier=".cg")
            a1 = _state_dot(acc, state, w1, ROWWISE, TF32) + tl.load(gx_tile + H, mask=tile_mask, other=0.0) + b1
            a2 = _state_dot(acc, state, w2, ROWWISE, TF32) + tl.load(gx_tile + 2 * H, mask=tile_mask, other=0.0) + b2
            a3 = _state_dot(acc, state, w3, ROWWISE, TF32) + tl.load(gx_tile + 3 * H, mask=tile_mask, other=0.0) + b3
            h_new = lstm_cell(a0, a1, a2, a3,
                              p_i, p_f, p_o, c_prev, h_prev, active, coupled, ws_tile, H, tile_mask)
        else:  # GRU (linear_before_reset): rnn_cells.gru_cell's lines, kept here (called, they spill)
            dtype = ws_ptr.dtype.element_ty
            r = tl.sigmoid(a0)
            a1 = _state_dot(acc, state, w1, ROWWISE, TF32) + tl.load(gx_tile + H, mask=tile_mask, other=0.0) + b1
            z = tl.sigmoid(a1)
            m = _state_dot(acc, state, w2, ROWWISE, TF32) + b2
            n = _tanh(tl.load(gx_tile + 2 * H, mask=tile_mask, other=0.0) + r * m)
            h_new = (1.0 - z) * n + z * h_prev
            tl.store(ws_tile, r.to(dtype), mask=tile_mask)
            tl.store(ws_tile + H, z.to(dtype), mask=tile_mask)
            tl.store(ws_tile + 2 * H, n.to(dtype), mask=tile_mask)
            tl.store(ws_tile + 3 * H, m.to(dtype), mask=tile_mask)
            tl.store(ws_tile + 4 * H, tl.where(active, h_new, h_prev).to(dtype), mask=tile_mask)
        y_tile = y_t + offs_b[:, None] * H + offs_h[None, :]
        tl.store(y_tile, tl.where(active, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit(do_not_specialize=_RUNTIME_ONLY)
def rnn_persistent_forward_kernel(
    gx_ptr, h0_ptr, c0_ptr, w_ptr, b_ptr, peep_ptr, len_ptr, y_ptr, ws_ptr, bar_ptr,
    T, B, H, HEAD, relu, coupled, reverse,
    CELL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, HP: tl.constexpr,
    SLICE_LOOP: tl.constexpr, ROWWISE: tl.constexpr, TF32: tl.constexpr, PER_HEAD: tl.constexpr,
):
    """All T steps of one layer direction. gx: (T, B, G*H) fp32 input projection (b_ih in it);
    h0/c0: (B, H) fp32; w: (G*H, HEAD), the compact w_hh of heads = H // HEAD (dense: HEAD = H);
    y: (T, B, H); ws: (T, B, K*H) fp32; bar: one int32, zero."""
    if not PER_HEAD:  # one head: the dense layer's build (HEAD is H)
        HEAD = H
    pid = tl.program_id(0)
    programs = tl.num_programs(0) * tl.num_programs(1)
    if SLICE_LOOP:  # a grid of (programs,): each takes every programs-th slice of every head
        per_head = tl.cdiv(HEAD, BLOCK_H)
        for s in range(0, T):
            t, t_prev = _step_index(s, T, reverse)
            for head in range(0, H // HEAD):
                for index in range(pid, per_head, programs):
                    offs_h, head_start = _slice_units(head, index, HEAD, BLOCK_H, PER_HEAD)
                    w0, w1, w2, w3 = _weight_tiles(w_ptr, offs_h, head_start, H, HEAD, CELL, False, HP, ROWWISE, TF32)
                    _forward_slice(t, t_prev, gx_ptr, h0_ptr, c0_ptr, w0, w1, w2, w3, b_ptr, peep_ptr, len_ptr,
                                   y_ptr, ws_ptr, B, H, HEAD, relu, coupled, offs_h, head_start, CELL, BLOCK_B,
                                   BLOCK_H, HP, ROWWISE, TF32)
            _grid_barrier(bar_ptr, s + 1, programs)
    else:
        # One slice per program (grid: slices of a head x heads): its rows of w_hh are loaded once
        # and stay on chip for all steps.
        offs_h, head_start = _slice_units(tl.program_id(1), pid, HEAD, BLOCK_H, PER_HEAD)
        w0, w1, w2, w3 = _weight_tiles(w_ptr, offs_h, head_start, H, HEAD, CELL, False, HP, ROWWISE, TF32)
        for s in range(0, T):
            t, t_prev = _step_index(s, T, reverse)
            _forward_slice(t, t_prev, gx_ptr, h0_ptr, c0_ptr, w0, w1, w2, w3, b_ptr, peep_ptr, len_ptr, y_ptr,
                           ws_ptr, B, H, HEAD, relu, coupled, offs_h, head_start, CELL, BLOCK_B, BLOCK_H, HP,
                           ROWWISE, TF32)
            _grid_barrier(bar_ptr, s + 1, programs)


@triton.jit
def _backward_pointwise(t, t_prev, gy_ptr, dh_ptr, dc_ptr, ws_ptr, h0_ptr, c0_ptr, peep_ptr, len_ptr, dgx_ptr,
                        dgh_ptr, B, H, HEAD, relu, coupled, offs_h, head_start, CELL: tl.constexpr,
                        BLOCK_B: tl.constexpr):
    """Phase 1 of step t for the hidden units ``offs_h``: gate gradients into dgx[t]/dgh[t]; dh
    becomes dhd (the part of dh_prev not through w_hh) and dc becomes dc_prev, in place."""
    G: tl.constexpr = 4 if CELL == 1 else (3 if CELL == 2 else 1)
    K: tl.constexpr = 6 if CELL == 1 else (5 if CELL == 2 else 1)
    h_mask = offs_h < head_start + HEAD
    p_i, p_f, p_o, _ = _gate_vectors(peep_ptr, offs_h, h_mask, H, 3 if CELL == 1 else 0)
    h_in, c_in, in_stride = _previous_state(t_prev, h0_ptr, c0_ptr, ws_ptr, B, H, K)
    ws_t = ws_ptr + t.to(tl.int64) * B * K * H
    dg_t = t.to(tl.int64) * B * G * H
    for b_start in range(0, B, BLOCK_B):
        offs_b = b_start + tl.arange(0, BLOCK_B).to(tl.int64)
        b_mask = offs_b < B
        tile_mask = b_mask[:, None] & h_mask[None, :]
        own = offs_b[:, None] * H + offs_h[None, :]  # dh, dc, grad_y: (B, H)
        ws_tile = ws_t + offs_b[:, None] * (K * H) + offs_h[None, :]
        dg = dg_t + offs_b[:, None] * (G * H) + offs_h[None, :]
        active = (tl.load(len_ptr + offs_b, mask=b_mask, other=0) > t)[:, None]
        dh_in = tl.load(dh_ptr + own, mask=tile_mask, other=0.0)
        gy = tl.load(gy_ptr + t.to(tl.int64) * B * H + own, mask=tile_mask, other=0.0).to(tl.float32)
        dh = dh_in + tl.where(active, gy, 0.0)
        if CELL == 0:  # RNN
            h_new = tl.load(ws_tile, mask=tile_mask, other=0.0)
            da = tl.where(relu != 0, tl.where(h_new > 0, dh, 0.0), dh * ((1.0 - h_new) * (1.0 + h_new)))
            tl.store(dgx_ptr + dg, tl.where(active, da, 0.0), mask=tile_mask)
            tl.store(dh_ptr + own, tl.where(active, 0.0, dh_in), mask=tile_mask)
        elif CELL == 1:  # LSTM
            dc_in = tl.load(dc_ptr + own, mask=tile_mask, other=0.0)
            i = tl.load(ws_tile, mask=tile_mask, other=0.0)
            f = tl.load(ws_tile + H, mask=tile_mask, other=0.0)
            g = tl.load(ws_tile + 2 * H, mask=tile_mask, other=0.0)
            o = tl.load(ws_tile + 3 * H, mask=tile_mask, other=0.0)
            c_new = tl.load(ws_tile + 4 * H, mask=tile_mask, other=0.0)
            c_prev = tl.load(c_in + offs_b[:, None] * in_stride + offs_h[None, :], mask=tile_mask, other=0.0)
            tc = _tanh(c_new)
            da_o = dh * tc * o * (1.0 - o)
            dc = dc_in + dh * o * ((1.0 - tc) * (1.0 + tc)) + da_o * p_o
            da_g = dc * i * ((1.0 - g) * (1.0 + g))
            di = tl.where(coupled != 0, dc * g - dc * c_prev, dc * g)  # coupled: f = 1 - i
            da_f = tl.where(coupled != 0, 0.0, dc * c_prev * f * (1.0 - f))
            da_i = di * i * (1.0 - i)
            dc_prev = dc * f + da_i * p_i + da_f * p_f
            tl.store(dgx_ptr + dg, tl.where(active, da_i, 0.0), mask=tile_mask)
            tl.store(dgx_ptr + dg + H, tl.where(active, da_f, 0.0), mask=tile_mask)
            tl.store(dgx_ptr + dg + 2 * H, tl.where(active, da_g, 0.0), mask=tile_mask)
            tl.store(dgx_ptr + dg + 3 * H, tl.where(active, da_o, 0.0), mask=tile_mask)
            tl.store(dh_ptr + own, tl.where(active, 0.0, dh_in), mask=tile_mask)
            tl.store(dc_ptr + own, tl.where(active, dc_prev, dc_in), mask=tile_mask)
        else:  # GRU (linear_before_reset)
            r = tl.load(ws_tile, mask=tile_mask, other=0.0)
            z = tl.load(ws_tile + H, mask=tile_mask, other=0.0)
            n = tl.load(ws_tile + 2 * H, mask=tile_mask, other=0.0)
            m = tl.load(ws_tile + 3 * H, mask=tile_mask, other=0.0)
            h_prev = tl.load(h_in + offs_b[:, None] * in_stride + offs_h[None, :], mask=tile_mask, other=0.0)
            da_z = tl.where(active, dh * (h_prev - n) * z * (1.0 - z), 0.0)
            da_n = tl.where(active, dh * (1.0 - z) * ((1.0 - n) * (1.0 + n)), 0.0)
            da_r = da_n * m * r * (1.0 - r)
            tl.store(dgx_ptr + dg, da_r, mask=tile_mask)
            tl.store(dgx_ptr + dg + H, da_z, mask=tile_mask)
            tl.store(dgx_ptr + dg + 2 * H, da_n, mask=tile_mask)
            tl.store(dgh_ptr + dg, da_r, mask=tile_mask)
            tl.store(dgh_ptr + dg + H, da_z, mask=tile_mask)
            tl.store(dgh_ptr + dg + 2 * H, da_n * r, mask=tile_mask)
            tl.store(dh_ptr + own, tl.where(active, dh * z, dh_in), mask=tile_mask)


@triton.jit
def _backward_recurrent(t, dh_ptr, dgh_ptr, w0, w1, w2, w3, B, H, HEAD, offs_h, head_start,
                        CELL: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr, ROWWISE: tl.constexpr,
                        TF32: tl.constexpr):
    """Phase 2 of step t for the columns ``offs_h``: dh[:, slice] += dgh[t] @ w_hh[:, slice]
    (the gate gradients of step t of the slice's head, written by its programs, read after the
    barrier: the other heads' rows of these columns are zeros of the block-diagonal matrix)."""
    G: tl.constexpr = 4 if CELL == 1 else (3 if CELL == 2 else 1)
    h_mask = offs_h < head_start + HEAD
    offs_j = tl.arange(0, HP)
    j_mask = offs_j < HEAD
    dg_t = dgh_ptr + t.to(tl.int64) * B * G * H + head_start
    for b_start in range(0, B, BLOCK_B):
        offs_b = b_start + tl.arange(0, BLOCK_B).to(tl.int64)
        b_mask = offs_b < B
        tile_mask = b_mask[:, None] & h_mask[None, :]
        dg_rows = dg_t + offs_b[:, None] * (G * H) + offs_j[None, :]
        dg_mask = b_mask[:, None] & j_mask[None, :]
        acc = tl.load(dh_ptr + offs_b[:, None] * H + offs_h[None, :], mask=tile_mask, other=0.0)
        acc = _state_dot(acc, tl.load(dg_rows, mask=dg_mask, other=0.0, cache_modifier=".cg"), w0, ROWWISE, TF32)
        if CELL != 0:
            acc = _state_dot(acc, tl.load(dg_rows + H, mask=dg_mask, other=0.0, cache_modifier=".cg"), w1,
                             ROWWISE, TF32)
            acc = _state_dot(acc, tl.load(dg_rows + 2 * H, mask=dg_mask, other=0.0, cache_modifier=".cg"), w2,
                             ROWWISE, TF32)
        if CELL == 1:
            acc = _state_dot(acc, tl.load(dg_rows + 3 * H, mask=dg_mask, other=0.0, cache_modifier=".cg"), w3,
                             ROWWISE, TF32)
        tl.store(dh_ptr + offs_b[:, None] * H + offs_h[None, :], acc, mask=tile_mask)
    tl.debug_barrier()  # the next step's phase 1 reads dh in another thread layout


@triton.jit(do_not_specialize=_RUNTIME_ONLY)
def rnn_persistent_backward_kernel(
    gy_ptr, dh_ptr, dc_ptr, ws_ptr, h0_ptr, c0_ptr, w_ptr, peep_ptr, len_ptr, dgx_ptr, dgh_ptr, bar_ptr,
    T, B, H, HEAD, relu, coupled, reverse,
    CELL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, HP: tl.constexpr,
    SLICE_LOOP: tl.constexpr, ROWWISE: tl.constexpr, TF32: tl.constexpr, PER_HEAD: tl.constexpr,
):
    """All T steps back through one layer direction. dh/dc: (B, H) fp32, grad_h_n/grad_c_n on
    entry, grad_h0/grad_c0 on exit; w: (G*H, HEAD) as forward; dgx/dgh: (T, B, G*H) fp32 gate
    gradients (the same buffer unless GRU); bar: one int32, zero."""
    # The pointwise phase has no product: 16 batch rows per pass also where the products go row
    # by row (ROWWISE: BLOCK_B is 1).
    POINT_B: tl.constexpr = 16 if ROWWISE else BLOCK_B
    if not PER_HEAD:  # one head: the dense layer's build (HEAD is H)
        HEAD = H
    pid = tl.program_id(0)
    programs = tl.num_programs(0) * tl.num_programs(1)
    if SLICE_LOOP:  # as forward
        per_head = tl.cdiv(HEAD, BLOCK_H)
        for s in range(0, T):
            t, t_prev = _step_index(T - 1 - s, T, reverse)
            for head in range(0, H // HEAD):
                for index in range(pid, per_head, programs):
                    offs_h, head_start = _slice_units(head, index, HEAD, BLOCK_H, PER_HEAD)
                    _backward_pointwise(t, t_prev, gy_ptr, dh_ptr, dc_ptr, ws_ptr, h0_ptr, c0_ptr, peep_ptr, len_ptr,
                                        dgx_ptr, dgh_ptr, B, H, HEAD, relu, coupled, offs_h, head_start, CELL, POINT_B)
            _grid_barrier(bar_ptr, s + 1, programs)
            for head in range(0, H // HEAD):
                for index in range(pid, per_head, programs):
                    offs_h, head_start = _slice_units(head, index, HEAD, BLOCK_H, PER_HEAD)
                    w0, w1, w2, w3 = _weight_tiles(w_ptr, offs_h, head_start, H, HEAD, CELL, True, HP, ROWWISE, TF32)
                    _backward_recurrent(t, dh_ptr, dgh_ptr, w0, w1, w2, w3, B, H, HEAD, offs_h, head_start, CELL,
                                        BLOCK_B, HP, ROWWISE, TF32)
    else:
        # One slice per program (grid as forward): its columns of w_hh are loaded once and stay on chip.
        offs_h, head_start = _slice_units(tl.program_id(1), pid, HEAD, BLOCK_H, PER_HEAD)
        w0, w1, w2, w3 = _weight_tiles(w_ptr, offs_h, head_start, H, HEAD, CELL, True, HP, ROWWISE, TF32)
        for s in range(0, T):
            t, t_prev = _step_index(T - 1 - s, T, reverse)
            _backward_pointwise(t, t_prev, gy_ptr, dh_ptr, dc_ptr, ws_ptr, h0_ptr, c0_ptr, peep_ptr, len_ptr,
                                dgx_ptr, dgh_ptr, B, H, HEAD, relu, coupled, offs_h, head_start, CELL, POINT_B)
            _grid_barrier(bar_ptr, s + 1, programs)
            _backward_recurrent(t, dh_ptr, dgh_ptr, w0, w1, w2, w3, B, H, HEAD, offs_h, head_start, CELL,
                                BLOCK_B, HP, ROWWISE, TF32)


# ---------------------------------------------------------------------------------------------
# Launch rule: a small pure function of the layer, the device and the compiled kernel

PERSISTENT_CELLS = {"rnn_tanh": RNN, "rnn_relu": RNN, "lstm": LSTM, "gru": GRU}
BLOCK_B = 16  # batch rows per product (tl.dot needs 16)
BLOCK_H = 16  # hidden units per program: the smallest tl.dot width, so the most programs
# The w_hh slice (every gate block, HP x BLOCK_H fp32 elements each) stays on chip for the whole
# sequence; backward also stages the gate gradients of the step beside it, about as much again.
# So a slice may take at most half of the largest shared memory a program can have (227 KiB on
# sm_90); the launch then checks the compiled kernel's registers and shared memory against the
# device (the widths above stay well inside this bound).
MAX_SHARED_PER_PROGRAM = 227 * 1024
SLICE_BUDGET_BYTES = MAX_SHARED_PER_PROGRAM // 2
# A wide (row-wise) slice lives in registers, spread over the program's threads: at most half of
# an SM's register file (64K 32-bit registers on sm_80 and sm_90), the rest for the step.
REGISTER_FILE_BYTES = 65536 * 4
ROWWISE_BUDGET_BYTES = REGISTER_FILE_BYTES // 2
ENVIRONMENT_SWITCH = "GPUKERNELS_RNN_PERSISTENT"


# The reduction widths (HP: H padded, one tile) whose builds keep the w_hh slice on chip without
# a spill, on sm_80 and sm_90, for every dtype, and the warps (forward, backward) with which they
# do: measured with the compile gate (Triton 3.6/3.7), not assumed. Triton's FMA products hold
# the hoisted tile partly in registers, so neither the widths nor the warps follow a simple
# rule: 4 warps spill from width 128 on in the LSTM and GRU cells and at 128 in the RNN cell
# (fp16 forward, sm_90); 8 warps build them cleanly, except the GRU backward at 128 (fp32,
# sm_90) and everything at GRU 256 or RNN 1024. Past the widest, the wide slices below. H between
# two widths runs at the larger one: the masked columns cost products, not memory traffic.
SLICE_WARPS = {
    RNN: {16: (4, 4), 32: (4, 4), 64: (4, 4), 128: (8, 8), 256: (4, 4), 512: (4, 4)},
    LSTM: {16: (4, 4), 32: (4, 4), 64: (4, 4), 128: (8, 8), 256: (8, 8)},
    GRU: {16: (4, 4), 32: (4, 4), 64: (4, 4), 128: (8, 4)},
}

# Past those widths, the wide slices (ROWWISE): the products go one batch row at a time as sums
# over the reduction axis, so the slice is spread over every thread of the program instead of
# being copied into each warp as a ``tl.dot`` operand, and a program owns 8 (or 4) hidden units,
# not 16, so twice (four times) as many programs share the layer. Per cell and storage dtype:
# width -> (hidden units per program, warps forward, warps backward), the builds without a spill
# on sm_80 and sm_90 (compile gate, Triton 3.6). They sit at the edge of the register file (up
# to 255 registers a thread, one program of 8 warps or two of 4 per SM), so whether the grid is
# resident is the device's question (``plan_launch``): LSTM H=1024 is 128 programs of 8 warps in
# fp16/bf16 (one per SM: an H100/H200's 132 SMs hold them, an A100's 108 do not) and 256 of 4
# warps in fp32 (4 units each: its 8-unit build spills 16 bytes on sm_90).
_EVERY_DTYPE = ("fp32", "fp16", "bf16")
ROWWISE_SLICES = {
    RNN: {dtype: {1024: (8, 8, 8)} for dtype in _EVERY_DTYPE},
    LSTM: {"fp32": {512: (8, 8, 8), 1024: (4, 4, 4)},
           **{dtype: {512: (8, 8, 8), 1024: (8, 8, 8)} for dtype in ("fp16", "bf16")}},
    GRU: {dtype: {256: (8, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 8)} for dtype in _EVERY_DTYPE},
}


# TF32 products (fp32 weights where torch allows TF32 for RNNs) on the tl.dot slices up to these
# reduction widths, per cell (forward, backward): the widest whose TF32 builds keep the slice on
# chip without a spill on sm_80 and sm_90 (compile gate, Triton 3.7). The tensor cores' operand
# layout holds the hoisted slice in more registers than the FMA products' one: the LSTM forward
# at 128 spills 16 bytes on sm_90 and at 256 136-160 bytes, the RNN at 512 0.6-1.7 KB. Wider
# slices keep exact fp32 products even where TF32 is allowed (their exact builds do not spill).
TF32_MAX_WIDTH = {RNN: (256, 256), LSTM: (64, 256), GRU: (128, 128)}


# The TF32 widths whose multi-head build (PER_HEAD) spills where the one-head TF32 build does not,
# per (cell, backward kernel): the RNN forward at 256 spills 16 bytes on sm_90 (compile gate).
# There multi-head layers keep exact fp32 products.
TF32_PER_HEAD_SPILLS = {(RNN, False): (256,)}


def takes_tf32(tile: "SliceTile", cell: str, backward: bool, heads: int = 1) -> bool:
    """Whether ``tile`` of ``cell`` has a spill-free TF32 build (tl.dot slices only: the wide
    row-wise slices have no tensor-core product)."""
    code = PERSISTENT_CELLS[cell]
    if heads > 1 and tile.hp in TF32_PER_HEAD_SPILLS.get((code, backward), ()):
        return False
    return not tile.rowwise and tile.hp <= TF32_MAX_WIDTH[code][int(backward)]


# The widths whose multi-head build (PER_HEAD: the head's offset and column mask beside the slice)
# spills where the one-head build does not, per (cell, backward kernel, dtype): measured with the
# compile gate (Triton 3.6, all on sm_90; ptxas stops at 64 or 128 registers in the tl.dot
# backward builds and spills 8-40 bytes, the LSTM fp16/bf16 1024-wide forward sits at 255 and
# spills 16). A multi-head layer whose head needs such a width takes the next spill-free one
# (LSTM heads of 129-256 units: the row-wise 512 slice in backward; RNN heads of 65-128: the 256
# one), or the per-step path past the widest (LSTM fp16/bf16 heads of 513-1024 units).
PER_HEAD_SPILLS = {
    **{(RNN, True, dtype): (128,) for dtype in _EVERY_DTYPE},
    **{(LSTM, True, dtype): (256,) for dtype in _EVERY_DTYPE},
    (LSTM, False, "fp16"): (1024,), (LSTM, False, "bf16"): (1024,),
}


@dataclass(frozen=True)
class SliceTile:
    block_b: int  # batch rows per product: 16 for tl.dot, 1 row-wise
    block_h: int  # hidden units per program
    hp: int  # the reduction width: H rounded up to a power of two (one tile, no K loop)
    num_warps: int
    rowwise: bool = False  # the products as row sums over a slice spread over all threads


def reduction_width(cell: str, H: int, dtype: str, skip: tuple[int, ...] = ()) -> int | None:
    """The smallest spill-free width that holds H (tl.dot slices first, then the wide row-wise
    ones of this storage dtype), past those in ``skip``, or None past the widest."""
    code = PERSISTENT_CELLS[cell]
    widths = sorted(SLICE_WARPS[code]) + sorted(ROWWISE_SLICES[code][dtype])
    return next((width for width in widths if width >= H and width not in skip), None)


def slice_bytes(cell: str, width: int, block_h: int = BLOCK_H) -> int:
    """Bytes of w_hh one program keeps on chip: every gate block's width x block_h tile, in fp32
    whatever the storage dtype (the products are exact fp32 ones; the row-wise slices are loaded
    in the storage dtype and widened once, before the time loop)."""
    return GATES[cell] * width * block_h * 4


def slice_tile(cell: str, H: int, *, dtype: str, linear_before_reset: bool = True,
               backward: bool = False, heads: int = 1) -> SliceTile | None:
    """The persistent tile of a layer with w_hh in ``dtype`` ("fp32", "fp16", "bf16"; of its
    backward kernel when ``backward``), or None when the cell or the slice rules it out. With
    ``heads`` the reduction is one head's H // heads columns, so the tile is that of a layer of
    one head's width (past the widths whose multi-head build spills, ``PER_HEAD_SPILLS``): the
    slice held on chip is heads times narrower, and layers heads times wider than the widest
    slice still run persistent."""
    if cell not in PERSISTENT_CELLS or (cell == "gru" and not linear_before_reset) or H < 1:
        return None
    code = PERSISTENT_CELLS[cell]
    skip = PER_HEAD_SPILLS.get((code, backward, dtype), ()) if heads > 1 else ()
    width = reduction_width(cell, H // heads, dtype, skip)
    if width is None:
        return None
    if width in SLICE_WARPS[code]:
        if slice_bytes(cell, width) > SLICE_BUDGET_BYTES:
            return None
        return SliceTile(BLOCK_B, BLOCK_H, width, SLICE_WARPS[code][width][int(backward)])
    block_h, *warps = ROWWISE_SLICES[code][dtype][width]
    if slice_bytes(cell, width, block_h) > ROWWISE_BUDGET_BYTES:
        return None
    return SliceTile(1, block_h, width, warps[int(backward)], rowwise=True)


def slice_count(H: int, heads: int, tile: SliceTile) -> int:
    """Programs of one slice each: the slices are cut per head (``_slice_units``), so a head
    whose width BLOCK_H does not divide has one partly masked slice."""
    return heads * triton.cdiv(H // heads, tile.block_h)


@dataclass(frozen=True)
class DeviceLimits:
    """Per-device numbers the co-residency test needs (from torch.cuda.get_device_properties)."""

    sm_count: int
    registers_per_sm: int = 65536
    shared_per_sm: int = 228 * 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    register_unit: int = 256  # registers are allocated per warp in units of 256
    shared_reserved_per_block: int = 1024  # the runtime's own 1 KiB per block (sm_80 and later)


@dataclass(frozen=True)
class KernelResources:
    """What the compiled kernel uses per program (CompiledKernel.n_regs/.n_spills/metadata.shared)."""

    registers: int
    shared: int
    spills: int
    num_warps: int


def resident_programs(device: DeviceLimits, kernel: KernelResources) -> int:
    """How many programs of ``kernel`` the whole device holds at once (the occupancy rules of
    NVIDIA's occupancy calculator: warps, registers per warp, shared memory, blocks per SM)."""
    threads = 32 * kernel.num_warps
    per_warp = -(-kernel.registers * 32 // device.register_unit) * device.register_unit
    by_registers = (device.registers_per_sm // per_warp) // kernel.num_warps if per_warp else device.max_blocks_per_sm
    shared = kernel.shared + device.shared_reserved_per_block
    per_sm = min(device.max_threads_per_sm // threads, by_registers, device.shared_per_sm // shared,
                 device.max_blocks_per_sm)
    return device.sm_count * max(per_sm, 0)


@dataclass(frozen=True)
class Plan:
    persistent: bool
    programs: int = 0
    slice_loop: bool = False
    reason: str = ""


def plan_launch(cell: str, H: int, T: int, *, dtype: str, linear_before_reset: bool = True,
                switch: str | None = None, interpreting: bool = False, device: DeviceLimits | None = None,
                kernel: KernelResources | None = None, backward: bool = False, heads: int = 1) -> Plan:
    """Persistent or per-step, and with how many programs.

    ``switch`` is GPUKERNELS_RNN_PERSISTENT: "0" forces the per-step path; "1" the persistent one
    wherever the cell has it (with one program looping over the slices when the grid cannot be
    resident, and always under the interpreter); unset: persistent where one program per slice
    is resident on the device, else per-step. ``kernel``: the compiled kernel at that tile.
    ``dtype``: w_hh's storage dtype, which picks the wide slices. The batch size does not enter:
    a program loops over the batch rows, holding only its slice of w_hh across steps. ``heads``:
    the tile is that of one head's width (``slice_tile``) and the slices are cut per head."""
    if switch == "0":
        return Plan(False, reason=f"{ENVIRONMENT_SWITCH}=0")
    tile = slice_tile(cell, H, dtype=dtype, linear_before_reset=linear_before_reset, backward=backward, heads=heads)
    if tile is None:
        return Plan(False, reason="no persistent kernel for this cell, or H past its spill-free slice widths")
    forced = switch == "1"
    if interpreting:  # programs run one after another: no barrier can wait, one program does all
        return Plan(True, 1, True, "interpreter") if forced else Plan(False, reason="interpreter (not forced)")
    if device is None or kernel is None:
        raise ValueError("a compiled launch needs the device limits and the compiled kernel's resources")
    slices = slice_count(H, heads, tile)
    resident = resident_programs(device, kernel)
    if kernel.spills:
        why = f"the kernel spills {kernel.spills} bytes"
    elif slices > resident:
        why = f"{slices} slices > {resident} resident programs"
    elif slices * T >= 2**31:  # the barrier's int32 counter reaches slices * T
        why = f"{slices} programs x {T} steps overflow the barrier counter"
    else:
        return Plan(True, slices, False, f"{slices} programs <= {resident} resident")
    return Plan(True, 1, True, why + "; forced: one program") if forced else Plan(False, reason=why)


# Blocks per SM by compute capability (CUDA C++ Programming Guide, technical specifications).
_MAX_BLOCKS_PER_SM = {(8, 0): 32, (8, 6): 16, (8, 7): 16, (8, 9): 24, (9, 0): 32, (10, 0): 32, (12, 0): 32}


def device_limits(device: torch.device) -> DeviceLimits:
    props = torch.cuda.get_device_properties(device)
    return DeviceLimits(sm_count=props.multi_processor_count,
                        registers_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
                        shared_per_sm=props.shared_memory_per_multiprocessor,
                        max_threads_per_sm=props.max_threads_per_multi_processor,
                        max_blocks_per_sm=_MAX_BLOCKS_PER_SM.get((props.major, props.minor), 16))


# The default until the multi-program path has run on a GPU: the per-step path. A spin barrier
# that no GPU has yet executed could hang a user's training step, so the persistent path is
# opt-in ("auto": where the grid is resident; "1": forced) until a GPU proof flips this.
DEFAULT_SWITCH = "0"


def _switch() -> str | None:
    """The switch as plan_launch takes it: "0", "1", or None for "auto" (the residency rule)."""
    value = environment_choice(ENVIRONMENT_SWITCH, DEFAULT_SWITCH, ("0", "1", "auto"))
    return None if value == "auto" else value


def _cooperative() -> dict:
    """Launch as a cooperative grid where this Triton can: the driver then guarantees that
    every program is resident (or refuses the launch) instead of trusting our count alone."""
    from triton.backends.nvidia.compiler import CUDAOptions

    return {"launch_cooperative_grid": True} if "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__ else {}


def _resources(compiled, num_warps: int) -> KernelResources:
    from triton.runtime.errors import OutOfResources

    try:
        compiled._init_handles()  # loads the binary: fills n_regs and n_spills
    except OutOfResources:  # more shared memory than this device gives a block: no program fits
        return KernelResources(registers=0, shared=compiled.metadata.shared, spills=0, num_warps=num_warps)
    return KernelResources(registers=compiled.n_regs, shared=compiled.metadata.shared, spills=compiled.n_spills,
                           num_warps=num_warps)


# Per process: the compiled resources of each kernel specialisation and each device's limits, so
# a layer call after the first does no warmup or property query.
_RESOURCES: dict[tuple, KernelResources] = {}
_DEVICE_LIMITS: dict[int | None, DeviceLimits] = {}


def specialization_key(args: tuple) -> tuple:
    """What Triton specialises a launch on, per argument: a tensor's dtype and 16-byte alignment,
    an integer's being 1 or a multiple of 16; floats and None as themselves (type only)."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, bool) or not isinstance(a, int):
            key.append(type(a).__name__)
        else:
            key.append((a == 1, a % 16 == 0))
    return tuple(key)


def _grid(programs: int, heads: int, slice_loop: bool) -> tuple[int, ...]:
    """One slice per program: (slices of a head, heads), the head on the second axis (the kernel
    never divides to find it); heads=1 and the slice loop: (programs,)."""
    return (programs,) if slice_loop or heads == 1 else (programs // heads, heads)


def _launch(kernel, args: tuple, cell: str, H: int, T: int, dtype: torch.dtype, linear_before_reset: bool,
            interpreting: bool, backward: bool, tf32: bool = False, heads: int = 1) -> bool:
    """Plans and, when persistent, launches ``kernel``; False: the caller takes the per-step path.
    ``dtype``: w_hh's. ``tf32``: TF32 allowed for these (fp32) weights; the ``tl.dot`` slices up to
    ``TF32_MAX_WIDTH`` take it (the wide row-wise slices have no tensor-core product)."""
    switch = _switch()
    dtype = TRITON_DTYPES[dtype]
    tile = slice_tile(cell, H, dtype=dtype, linear_before_reset=linear_before_reset, backward=backward, heads=heads)
    if tile is None or switch == "0" or interpreting:  # decided without compiling anything
        plan = plan_launch(cell, H, T, dtype=dtype, linear_before_reset=linear_before_reset, switch=switch,
                           interpreting=interpreting, backward=backward, heads=heads)
        if not plan.persistent:
            return False
    constants = {"CELL": PERSISTENT_CELLS[cell], "BLOCK_B": tile.block_b, "BLOCK_H": tile.block_h, "HP": tile.hp,
                 "ROWWISE": tile.rowwise, "TF32": tf32 and takes_tf32(tile, cell, backward, heads),
                 "PER_HEAD": heads > 1}
    options = {"num_warps": tile.num_warps} if interpreting else {"num_warps": tile.num_warps, **_cooperative()}
    if not interpreting:  # the compiled kernel's registers and shared memory decide how many are resident
        device = args[0].device
        key = (kernel.fn.__name__, tuple(constants.items()), tile.num_warps, device.index, specialization_key(args))
        if key not in _RESOURCES:  # compile (or find) the binary once per specialisation, not every call
            compiled = kernel.warmup(*args, grid=_grid(slice_count(H, heads, tile), heads, False), SLICE_LOOP=False,
                                     **constants, **options)
            _RESOURCES[key] = _resources(compiled, tile.num_warps)
        if device.index not in _DEVICE_LIMITS:
            _DEVICE_LIMITS[device.index] = device_limits(device)
        plan = plan_launch(cell, H, T, dtype=dtype, switch=switch, device=_DEVICE_LIMITS[device.index],
                           kernel=_RESOURCES[key], backward=backward, heads=heads)
        if not plan.persistent:
            return False
    kernel[_grid(plan.programs, heads, plan.slice_loop)](*args, SLICE_LOOP=plan.slice_loop, **constants, **options)
    return True


def layer_forward(s, *, T: int, cell: str, reverse: bool, linear_before_reset: bool, interpreting: bool,
                  tf32: bool = False) -> bool:
    """The whole forward time loop of the driver's layer in one launch (``s``: the driver's
    ForwardStep of t=0 holding the full-sequence gx, y and workspace; ``s.w`` compact when
    ``s.heads > 1``). False: not taken, the driver runs its step loop. ``tf32``: TF32 products
    allowed (fp32 weights, torch's RNN flag)."""
    if cell not in PERSISTENT_CELLS:
        return False
    barrier = torch.zeros(1, dtype=torch.int32, device=s.ws.device)
    args = (s.gx, s.h, s.c, s.w, s.b, s.peep, s.lens, s.y, s.ws, barrier, T, s.B, s.H, s.H // s.heads, s.relu,
            s.coupled, int(reverse))
    return _launch(rnn_persistent_forward_kernel, args, cell, s.H, T, s.w.dtype, linear_before_reset, interpreting,
                   backward=False, tf32=tf32, heads=s.heads)


def layer_backward(s, *, w, T: int, cell: str, reverse: bool, linear_before_reset: bool, interpreting: bool,
                   tf32: bool = False, heads: int = 1) -> bool:
    """The whole backward time loop in one launch (``s``: the driver's BackwardStep of t=0 with
    the full-sequence grad_y, workspace and gate gradients, h_prev/c_prev holding h0/c0; ``w``
    compact (G*H, H // heads)): ``s.dh``/``s.dc`` (grad_h_n/grad_c_n, fp32) become
    grad_h0/grad_c0 in place."""
    if cell not in PERSISTENT_CELLS or not (s.dh.is_contiguous() and s.dc.is_contiguous()):
        return False
    barrier = torch.zeros(1, dtype=torch.int32, device=s.ws.device)
    args = (s.gy, s.dh, s.dc, s.ws, s.h_prev, s.c_prev, w, s.peep, s.lens, s.dgx, s.dgh, barrier,
            T, s.B, s.H, s.H // heads, s.relu, s.coupled, int(reverse))
    return _launch(rnn_persistent_backward_kernel, args, cell, s.H, T, w.dtype, linear_before_reset, interpreting,
                   backward=True, tf32=tf32, heads=heads)


# ---------------------------------------------------------------------------------------------
# Bytes model (computed, not measured): what the persistent path saves in w_hh reads and what its
# state exchange costs, per layer direction

_ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Traffic:
    programs: int  # one slice each (the forward tile)
    programs_backward: int  # the backward tile's (its slices may be narrower)
    w_hh_step_path: int  # bytes of w_hh the per-step path reads in T forward steps
    w_hh_persistent: int  # the persistent path: once per sequence (each program its slice)
    exchange_forward: int  # per forward step: each program reads its head's HEAD fp32 state columns
    exchange_backward: int  # per backward step: each backward program reads its head's G x HEAD fp32 gate gradients


def traffic(cell: str, H: int, B: int, T: int, *, dtype: str, heads: int = 1) -> Traffic | None:
    """The bytes model of a layer with w_hh in ``dtype`` ("fp32", "fp16", "bf16"), or None where
    its forward or backward kernel has no persistent tile. With heads, w_hh is compact (G*H x H // heads elements) and a
    program multiplies only its head's columns: the weight bytes drop by ``heads``, and the
    exchange (programs x B x H // heads x 4) by about ``heads`` too (more where the head's width
    picks wider slices than the layer's). The per-step path reads every step's w_hh once per
    batch tile, the dense expansion where its step kernel takes no head that narrow."""
    from .rnn import step_takes_heads, step_tile  # rnn imports this module

    tile = slice_tile(cell, H, dtype=dtype, heads=heads)
    backward_tile = slice_tile(cell, H, dtype=dtype, heads=heads, backward=True)
    if tile is None or backward_tile is None:
        return None
    head = H // heads
    compact = GATES[cell] * H * head * _ITEMSIZE[dtype]
    step_weights = compact if heads == 1 or step_takes_heads(head) else GATES[cell] * H * H * _ITEMSIZE[dtype]
    programs, programs_backward = slice_count(H, heads, tile), slice_count(H, heads, backward_tile)
    return Traffic(programs=programs, programs_backward=programs_backward,
                   w_hh_step_path=T * triton.cdiv(B, step_tile(B).block_b) * step_weights,
                   w_hh_persistent=compact, exchange_forward=programs * B * head * 4,
                   exchange_backward=programs_backward * B * GATES[cell] * head * 4)


# ---------------------------------------------------------------------------------------------
# Compile gate: every tile the launch rule can pick (one per cell, dtype and reduction width)

_CELL_OF_CODE = {RNN: "rnn_tanh", LSTM: "lstm", GRU: "gru"}


def gate_tiles(backward: bool, per_head: bool = False) -> Iterator[tuple[str, str, SliceTile]]:
    """(cell, dtype name, tile) for every reduction width each cell and dtype can run persistent
    (``per_head``: as one head of several)."""
    heads = 2 if per_head else 1
    for name in TRITON_DTYPES.values():
        for cell in _CELL_OF_CODE.values():
            code = PERSISTENT_CELLS[cell]
            skip = PER_HEAD_SPILLS.get((code, backward, name), ()) if per_head else ()
            for width in [*SLICE_WARPS[code], *ROWWISE_SLICES[code][name]]:
                if width in skip:  # never picked (the build spills): not built either
                    continue
                tile = slice_tile(cell, heads * width, dtype=name, backward=backward, heads=heads)
                if tile is not None:
                    yield cell, name, tile


def _forward_args(cell: str, dtype: str, H: int, head: int) -> dict:
    return dict(gx_ptr=fresh("fp32"), h0_ptr=passed("fp32", False), c0_ptr=passed("fp32", False),
                w_ptr=passed(dtype, False), b_ptr=passed(dtype, False), peep_ptr=passed(dtype, False),
                len_ptr=fresh("i32"), y_ptr=fresh(dtype), ws_ptr=fresh("fp32"), bar_ptr=fresh("i32"),
                T=100, B=37, H=H, HEAD=head, relu=0, coupled=0, reverse=0)


def _backward_args(cell: str, dtype: str, H: int, head: int) -> dict:
    return dict(gy_ptr=passed(dtype, False), dh_ptr=fresh("fp32"), dc_ptr=fresh("fp32"), ws_ptr=fresh("fp32"),
                h0_ptr=passed("fp32", False), c0_ptr=passed("fp32", False), w_ptr=passed(dtype, False),
                peep_ptr=passed(dtype, False), len_ptr=fresh("i32"), dgx_ptr=fresh("fp32"), dgh_ptr=fresh("fp32"),
                bar_ptr=fresh("i32"), T=100, B=37, H=H, HEAD=head, relu=0, coupled=0, reverse=0)


def compile_cases() -> Iterator[CompileCase]:
    """Both persistent kernels at every tile ``plan_launch`` can pick for a compiled launch (one
    program per slice), for one head (heads=1) and for many (PER_HEAD: a ragged head width, 3
    heads); no argument is specialised, so one build stands for every launch of its tile."""
    for backward, kernel, make_args in ((False, rnn_persistent_forward_kernel, _forward_args),
                                        (True, rnn_persistent_backward_kernel, _backward_args)):
        for per_head in (False, True):
            for cell, dtype, tile in gate_tiles(backward, per_head):
                head = tile.hp - 3  # ragged: the masked tails are built
                H = 3 * head if per_head else head
                # fp32 weights' tl.dot slices also in TF32 (what _launch passes where torch allows it)
                takes = dtype == "fp32" and takes_tf32(tile, cell, backward, 2 if per_head else 1)
                for tf32 in (False, True) if takes else (False,):
                    constants = {"CELL": PERSISTENT_CELLS[cell], "BLOCK_B": tile.block_b, "BLOCK_H": tile.block_h,
                                 "HP": tile.hp, "SLICE_LOOP": False, "ROWWISE": tile.rowwise, "TF32": tf32,
                                 "PER_HEAD": per_head}
                    products = "rowwise" if tile.rowwise else "dot-tf32" if tf32 else "dot"
                    yield CompileCase(name=f"rnn_persistent_{'backward' if backward else 'forward'}[{cell.split('_')[0]}]",
                                      kernel=kernel, args={**make_args(cell, dtype, H, head), **constants},
                                      num_warps=tile.num_warps,
                                      tags={"dtype": dtype, "hp": str(tile.hp), "block_h": str(tile.block_h),
                                            "products": products, "heads": "many" if per_head else "1"})
