"""The sequence loops of the recurrent layers, shared by the Triton and the CuPy backends.

Why this exists: both backends run a layer the same way: one input-projection matmul for
all steps, then one step kernel per time step (two for the original GRU), and back through
time one pointwise kernel per step plus the recurrent-gradient matmuls, then one matmul per
weight gradient. The order of steps, reversal, lengths, which workspace block holds h_prev /
c_prev, and the original-GRU two-kernel dance must agree with ``gpukernels.reference.rnn``
in every backend, so they are written once, here. What differs is the array library
(torch / CuPy / NumPy in the host tests) and how a step kernel is launched; a backend passes
those in as an ``RnnBackend``.

The workspace layout, the cell codes and the precision rule (recurrent state, workspace and
all of backward in fp32 whatever the storage dtype) are the same in both backends.

Multi-head recurrent weights (``heads > 1``, see ``gpukernels.ops.rnn``): ``w_hh`` arrives
compact, ``(G*H, size)`` with ``size = H // heads``, and every product with it runs head by head
as one batched matmul over views (``head_product``, ``head_gradient``, ``head_weight_gradient``):
heads times fewer FLOPs and weight bytes than the dense block-diagonal matrix, which is formed
(``block_diagonal``) only where a kernel cannot take blocks that small: a backend whose forward
step kernel does its own product says which head sizes it takes (``step_takes_heads``); a backend
that runs the whole loop in one launch (``forward_layer``) gets the compact weight first, and the
expansion is formed only when it declined.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence

# Kernel cell codes (compile-time switch in both backends). RNN covers tanh and relu (a runtime flag).
RNN, LSTM, GRU, GRU_RZ, GRU_N = 0, 1, 2, 3, 4
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
WORKSPACE_BLOCKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 6, "gru": 5}


class ForwardStep(NamedTuple):
    """One forward step launch. ``gx``, ``w`` and ``b`` are the gate blocks this launch computes
    (all of them, r and z, or n alone); ``hin`` is what multiplies ``w`` (h, or r*h for GRU_N)."""

    storage: Any  # an array in the storage dtype (x): picks the kernel's type
    t: int
    B: int
    H: int
    gx: Any
    gx_stride: int
    hin: Any
    w: Any
    b: Any
    h: Any
    c: Any
    peep: Any
    lens: Any
    y: Any
    ws: Any
    ws_stride: int
    relu: int
    coupled: int
    heads: int = 1  # how many diagonal blocks ``w`` holds (1: w is dense, (G*H, H))


class BackwardStep(NamedTuple):
    """One backward step launch (arguments of the pointwise backward kernel)."""

    storage: Any
    t: int
    B: int
    H: int
    gy: Any
    dh: Any
    dc: Any
    ws: Any
    ws_stride: int
    h_prev: Any
    c_prev: Any
    peep: Any
    lens: Any
    drh: Any
    dgx: Any
    dgh: Any
    dhd: Any
    dcp: Any
    relu: int
    coupled: int


class RnnBackend(Protocol):
    """What the loops need of a backend: array allocation, a few matmuls, two step launchers.
    Arrays support slicing, ``reshape``, ``@``, ``.T`` (2-D), ``.sum(dims)`` and ``.dtype``."""

    f32: Any  # the library's float32 dtype

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def as_f32(self, a: Any) -> Any:
        """``a`` in float32 (no copy when it already is)."""

    def contiguous(self, a: Any) -> Any: ...

    def copy(self, a: Any) -> Any: ...

    def lengths(self, lengths: Sequence[int] | None, T: int, B: int) -> Any:
        """int32 lengths; all T when absent (the kernels always mask, one variant)."""

    def concat(self, parts: Sequence[Any]) -> Any: ...

    def stack(self, parts: Sequence[Any]) -> Any: ...

    def input_projection(self, x2d: Any, w_ih: Any, b_ih: Any | None) -> Any:
        """(T*B, G*H): every step's x @ w_ih^T (+ b_ih) at once."""

    def step_weights(self, w_hh: Any) -> Any:
        """``w_hh`` as ``forward_step`` takes it (rows sliced per gate block)."""

    def matmul_into(self, a: Any, b: Any, out: Any) -> None: ...

    def addmm(self, c: Any, a: Any, b: Any) -> Any:
        """c + a @ b."""

    def permute(self, a: Any, dims: tuple[int, ...]) -> Any:
        """The view of ``a`` with its axes in the order ``dims``."""

    def step_takes_heads(self, size: int) -> bool:
        """Whether ``forward_step`` runs the recurrent product of ``size``-unit heads from the
        compact weight itself (False: it gets the dense block-diagonal matrix)."""

    def forward_step(self, code: int, step: ForwardStep) -> None: ...

    def backward_step(self, code: int, step: BackwardStep) -> None: ...


def kernel_cells(cell: str, linear_before_reset: bool) -> tuple[int, ...]:
    """The kernel launches of one step, in order."""
    if cell == "lstm":
        return (LSTM,)
    if cell == "gru":
        return (GRU,) if linear_before_reset else (GRU_RZ, GRU_N)
    return (RNN,)


def steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _or_zeros(ops: RnnBackend, array, shape, dtype):
    """Absent biases and peepholes are zero weights: one kernel variant per cell (the loads
    cost next to nothing beside the matmul)."""
    return ops.zeros(shape, dtype) if array is None else ops.contiguous(array)


# ---------------------------------------------------------------------------------------------
# Multi-head recurrent weights: the products head by head. The compact w_hh (G*H, size) is
# (G, heads, size, size) in place: block [g, j] holds the rows of gate g for head j's units and
# multiplies head j's slice of the state. Each product is one batched matmul over views of
# (heads, ...) or (G, heads, ...) stacks; the state and gate arrays keep their gate-major
# layout, so a result is gathered back into it (one copy of the result).


def head_product(ops: RnnBackend, hin, w, heads: int):
    """``hin @ blockdiag(w)^T``, (B, G'*H) gate-major, of a compact ``w`` (G'*H, size)."""
    B, H = (int(n) for n in hin.shape)
    size = H // heads
    gates = int(w.shape[0]) // H
    state = ops.permute(hin.reshape(B, heads, size), (1, 0, 2))  # (heads, B, size), broadcast over gates
    blocks = ops.permute(w.reshape(gates, heads, size, size), (0, 1, 3, 2))  # transposed: (g, j, in, out)
    product = state @ blocks  # (gates, heads, B, size)
    return ops.contiguous(ops.permute(product, (2, 0, 1, 3))).reshape(B, gates * H)


def heads_by_head(ops: RnnBackend, w, gates: int, heads: int):
    """The compact ``w`` (G*H, size) with each head's rows together, gate-major: (heads, G*size,
    size), what ``head_gradient`` multiplies by (made once per layer call)."""
    size = int(w.shape[1])
    return ops.contiguous(ops.permute(w.reshape(gates, heads, size, size), (1, 0, 2, 3))).reshape(
        heads, gates * size, size)


def head_gradient(ops: RnnBackend, dgates, by_head, c=None):
    """``[c +] dgates @ blockdiag(w)`` (B, H) for gate gradients ``dgates`` (B, G'*H) and
    ``by_head`` (heads, G'*size, size) from ``heads_by_head`` (sliced to the same gates): each
    head's gate gradients gathered head-major (one copy), one product over K = G'*size per head,
    and the sum with ``c`` (B, H) written in c's layout (the add is the copy back, no third pass)."""
    heads, rows, size = (int(n) for n in by_head.shape)
    B = int(dgates.shape[0])
    gates = rows // size
    gathered = ops.contiguous(ops.permute(dgates.reshape(B, gates, heads, size), (2, 0, 1, 3)))
    by_unit = ops.permute(gathered.reshape(heads, B, rows) @ by_head, (1, 0, 2))  # (B, heads, size)
    if c is None:
        return ops.contiguous(by_unit).reshape(B, heads * size)
    # the sum takes the layout of its first operand (c, row-major): its reshape is a view
    return (c.reshape(B, heads, size) + by_unit).reshape(B, heads * size)


def head_weight_gradient(ops: RnnBackend, dgates, states, heads: int):
    """The compact w_hh gradient (G'*H, size) of gate gradients ``dgates`` (N, G'*H) and the
    states they multiplied ``states`` (N, H): block [g, j] = dgates[:, g, j]^T @ states[:, j]."""
    N, H = (int(n) for n in states.shape)
    size = H // heads
    gates = int(dgates.shape[1]) // H
    d = ops.permute(dgates.reshape(N, gates, heads, size), (1, 2, 3, 0))  # (gates, heads, size, N)
    h = ops.permute(states.reshape(N, heads, size), (1, 0, 2))  # (heads, N, size)
    return ops.contiguous(d @ h).reshape(gates * H, size)


def block_diagonal(ops: RnnBackend, w, gates: int, heads: int):
    """The dense ``(G*H, H)`` recurrent weight of the compact ``(G*H, H // heads)`` one: each
    row's values in its head's columns, zeros elsewhere (written as zeros, never as a product
    with a mask, so an inf in one head cannot put NaN into another). Only for kernels that cannot
    take the blocks (the caller says which, and why)."""
    rows, size = (int(n) for n in w.shape)
    dense = ops.zeros((rows, size * heads), w.dtype)
    blocks = dense.reshape(gates, heads, size, heads, size)  # a view: writing it writes dense
    compact = w.reshape(gates, heads, size, size)
    for head in range(heads):
        blocks[:, head, :, head, :] = compact[:, head]
    return dense


def states_before(ops: RnnBackend, ws, block: int, initial, H: int, reverse: bool):
    """(T, B, H): the state each step started from (block ``block`` of the previous step)."""
    after = ws[:, :, block * H:(block + 1) * H]
    if after.shape[0] == 0:
        return after
    return ops.concat([after[1:], initial[None]] if reverse else [initial[None], after[:-1]])


def layer_forward(ops: RnnBackend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, cell: str, reverse: bool = False,
                  lengths=None, coupled: bool = False, linear_before_reset: bool = True, heads: int = 1):
    """Returns y (storage dtype), h_n, c_n (fp32; c_n None unless LSTM) and the fp32 workspace.
    ``w_hh`` is compact when ``heads > 1``."""
    T, B, I = x.shape
    H = h0.shape[1]
    G, K = GATES[cell], WORKSPACE_BLOCKS[cell]
    gx = ops.input_projection(x.reshape(T * B, I), w_ih, b_ih).reshape(T, B, G * H)
    y = ops.empty((T, B, H), x.dtype)
    # The workspace, and with it the recurrent state, stays fp32 whatever the storage dtype:
    # rounding h and c to fp16/bf16 at every step would compound over the sequence.
    ws = ops.empty((T, B, K * H), ops.f32)
    lens = ops.lengths(lengths, T, B)
    b_hh = _or_zeros(ops, b_hh, (G * H,), x.dtype)
    peep = _or_zeros(ops, w_peep, (3, H), x.dtype)
    w = ops.step_weights(w_hh)
    h = ops.contiguous(ops.as_f32(h0))
    c = None if c0 is None else ops.contiguous(ops.as_f32(c0))
    h_col = (K - 1) * H
    # A backend may run the whole time loop in one launch (Triton's persistent kernel): it gets
    # the full-sequence gx, y and workspace in a ForwardStep of t=0 (w compact with heads) and
    # says whether it did.
    whole = getattr(ops, "forward_layer", None)
    ran = bool(T and B and H) and whole is not None and whole(
        ForwardStep(x, 0, B, H, gx, G * H, h, w, b_hh, h, h if c is None else c, peep, lens, y, ws, K * H,
                    int(cell == "rnn_relu"), int(coupled), heads), T=T, cell=cell, reverse=reverse,
        linear_before_reset=linear_before_reset)
    if not ran and heads > 1 and not ops.step_takes_heads(H // heads):
        # the backend's step kernel says why; formed only for the step loop below
        w, heads = ops.step_weights(block_diagonal(ops, w_hh, G, heads)), 1
    if ran:
        last = steps(T, reverse)[-1]
        h, c = ws[last, :, h_col:h_col + H], (ws[last, :, 4 * H:5 * H] if cell == "lstm" else None)
    for t in steps(T, reverse) if B and H and not ran else ():
        step = ForwardStep(x, t, B, H, gx[t], G * H, h, w, b_hh, h, h if c is None else c, peep, lens, y[t], ws[t],
                           K * H, int(cell == "rnn_relu"), int(coupled), heads)
        if cell == "gru" and not linear_before_reset:
            ops.forward_step(GRU_RZ, step._replace(w=w[:2 * H]))
            # GRU_N multiplies r*h (workspace block 3, just written) by the n rows of w_hh.
            ops.forward_step(GRU_N, step._replace(gx=gx[t, :, 2 * H:], hin=ws[t, :, 3 * H:4 * H], w=w[2 * H:],
                                                  b=b_hh[2 * H:]))
        else:
            ops.forward_step(kernel_cells(cell, True)[0], step)
        h = ws[t, :, h_col:h_col + H]
        c = ws[t, :, 4 * H:5 * H] if cell == "lstm" else None
    return y, ops.copy(h), None if c is None else ops.copy(c), ws


def layer_backward(ops: RnnBackend, grad_y, grad_h_n, grad_c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *,
                   cell: str, reverse: bool = False, lengths=None, coupled: bool = False,
                   linear_before_reset: bool = True, heads: int = 1):
    """Returns grad_x, grad_h0, grad_c0 and the weight gradients, all fp32 (None where absent);
    with ``heads > 1`` ``w_hh`` and its gradient are compact and every product runs per head."""
    T, B, I = x.shape
    H = h0.shape[1]
    G, K = GATES[cell], WORKSPACE_BLOCKS[cell]
    f32 = ops.f32
    grad_y, ws, h0 = ops.contiguous(grad_y), ops.contiguous(ops.as_f32(ws)), ops.contiguous(ops.as_f32(h0))
    c0 = None if c0 is None else ops.contiguous(ops.as_f32(c0))
    dgx = ops.empty((T, B, G * H), f32)
    # Only the GRU's recurrent gate gradients differ from the input ones (n: da_n * r).
    dgh = dgx if cell != "gru" else ops.empty((T, B, G * H), f32)
    dh = ops.zeros((B, H), f32) if grad_h_n is None else ops.copy(ops.as_f32(grad_h_n))
    dc = None
    if cell == "lstm":
        dc = ops.zeros((B, H), f32) if grad_c_n is None else ops.copy(ops.as_f32(grad_c_n))
    w32 = ops.as_f32(w_hh)
    size = H // heads
    by_head = heads_by_head(ops, w32, G, heads) if heads > 1 else None

    def recurrent(c, dgates, first: int, last: int):
        """c + dgates @ w_hh[rows of gates first..last] (dgates: those gates' gradients)."""
        if by_head is not None:
            return head_gradient(ops, dgates, by_head[:, first * size:last * size], c)
        return ops.addmm(c, dgates, w32 if (first, last) == (0, G) else w32[first * H:last * H])
    lens = ops.lengths(lengths, T, B)
    peep = _or_zeros(ops, w_peep, (3, H), x.dtype)
    dhd = ops.empty((B, H), f32)
    dcp = ops.empty((B, H), f32) if dc is not None else dhd
    drh = ops.empty((B, H), f32)
    h_col = (K - 1) * H
    order = list(steps(T, reverse))
    whole = getattr(ops, "backward_layer", None)  # the whole loop in one launch (see layer_forward)
    ran = bool(T and B and H) and whole is not None and whole(
        BackwardStep(x, 0, B, H, grad_y, dh, dh if dc is None else dc, ws, K * H, h0, h0 if c0 is None else c0,
                     peep, lens, drh, dgx, dgh, dhd, dcp, int(cell == "rnn_relu"), int(coupled)),
        w=ops.step_weights(w_hh), T=T, cell=cell, reverse=reverse, linear_before_reset=linear_before_reset,
        heads=heads)
    for index in range(T - 1, -1, -1) if B and H and not ran else ():
        t = order[index]
        previous = None if index == 0 else order[index - 1]
        h_prev = h0 if previous is None else ws[previous, :, h_col:h_col + H]
        c_prev = h_prev
        if cell == "lstm":
            c_prev = c0 if previous is None else ws[previous, :, 4 * H:5 * H]
        step = BackwardStep(x, t, B, H, grad_y[t], dh, dh if dc is None else dc, ws[t], K * H, h_prev, c_prev, peep,
                            lens, drh, dgx[t], dgh[t], dhd, dcp, int(cell == "rnn_relu"), int(coupled))
        if cell == "gru" and not linear_before_reset:
            ops.backward_step(GRU_N, step)
            if by_head is not None:
                drh[...] = head_gradient(ops, dgh[t, :, 2 * H:], by_head[:, 2 * size:])
            else:
                ops.matmul_into(dgh[t, :, 2 * H:], w32[2 * H:], drh)
            ops.backward_step(GRU_RZ, step._replace(dh=dhd))  # adds d(r*h) * r to dhd in place
            dh = recurrent(dhd, dgh[t, :, :2 * H], 0, 2)
        else:
            ops.backward_step(kernel_cells(cell, True)[0], step)
            dh = recurrent(dhd, dgh[t], 0, G)
        if dc is not None:
            dc, dcp = dcp, dc
    # Weight gradients: one matmul each over all steps.
    dgx2d, dgh2d = dgx.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
    grad_x = (dgx2d @ ops.as_f32(w_ih)).reshape(T, B, I)
    grad_w_ih = dgx2d.T @ ops.as_f32(x.reshape(T * B, I))
    h_before = states_before(ops, ws, K - 1, h0, H, reverse).reshape(T * B, H)

    def weight_gradient(dgates, states):  # compact (per head) when heads > 1
        return dgates.T @ states if heads == 1 else head_weight_gradient(ops, dgates, states, heads)

    if cell == "gru" and not linear_before_reset:
        m_all = ws[:, :, 3 * H:4 * H].reshape(T * B, H)
        grad_w_hh = ops.concat([weight_gradient(dgh2d[:, :2 * H], h_before),
                                weight_gradient(dgh2d[:, 2 * H:], m_all)])
    else:
        grad_w_hh = weight_gradient(dgh2d, h_before)
    grad_b_ih = None if b_ih is None else dgx2d.sum(0)
    grad_b_hh = None if b_hh is None else dgh2d.sum(0)
    grad_w_peep = None
    if cell == "lstm" and w_peep is not None:
        c_before = states_before(ops, ws, 4, c0, H, reverse)
        c_after = ws[:, :, 4 * H:5 * H]
        grad_w_peep = ops.stack([(dgx[:, :, :H] * c_before).sum((0, 1)),
                                 (dgx[:, :, H:2 * H] * c_before).sum((0, 1)),
                                 (dgx[:, :, 3 * H:] * c_after).sum((0, 1))])
    return grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep
