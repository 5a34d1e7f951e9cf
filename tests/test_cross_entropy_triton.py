"""The Triton cross-entropy kernel against the float64 reference through the public ops, every
target kind, dtype and launch tier, odd row counts and widths (1, primes, empty), and the cases
where a fused forward gradient goes wrong (Liger-Kernel's): reduction="none" with a
non-uniform upstream gradient, inputs that do not require grad, ignore_index rows, label
smoothing, class weights. In Triton's interpreter on CPU tensors here, compiled on a GPU.
Test ids: R<rows>-C<cols>-<dtype>."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import gpukernels as gk
import gpukernels.torch.functional as GF
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from conftest import DEVICE
from gpukernels.triton import cross_entropy as tce

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered:RuntimeWarning")


def _numpy(a):
    return None if a is None else (as_float64(a) if a.is_floating_point() else a.cpu().numpy())


def _compare(op, x, target, weight, dtype, **kwargs):
    """``op``_forward and ``op``_backward on Triton against the float64 reference."""
    upstream_shape = tuple(s for a, s in enumerate(x.shape) if a != (1 if x.dim() > 1 else 0))
    upstream = torch.randn(upstream_shape if kwargs.get("reduction") == "none" else (), dtype=x.dtype, device=DEVICE)
    weight_kw = "alpha" if op == "focal_loss" else "weight"
    with gk.use_backend("triton"):
        loss, grad = getattr(gk, f"{op}_forward")(x, target, **{weight_kw: weight}, **kwargs)
        back = getattr(gk, f"{op}_backward")(upstream, x, target, **{weight_kw: weight}, **kwargs)
    with gk.use_backend("numpy"):
        want_loss, want_grad = getattr(gk, f"{op}_forward")(_numpy(x), _numpy(target), **{weight_kw: _numpy(weight)},
                                                           **kwargs)
        want_back = getattr(gk, f"{op}_backward")(_numpy(upstream), _numpy(x), _numpy(target),
                                                  **{weight_kw: _numpy(weight)}, **kwargs)
    assert loss.dtype == x.dtype and grad.dtype == x.dtype and grad.shape == x.shape and back.shape == x.shape
    assert_close(loss, want_loss, dtype, "reduction")
    assert_close(grad, want_grad, dtype, "reduction")
    assert_close(back, want_back, dtype, "reduction")


def _index_target(rng, rows, classes, ignored=True):
    target = torch.from_numpy(rng.integers(0, classes, rows))
    if ignored and rows > 2:
        target[1] = -100
    return target.to(DEVICE)


CASES = [pytest.param(rows, cols, dtype, id=f"R{rows}-C{cols}-{dtype}")
         for rows, cols in ((1, 2), (3, 7), (5, 257), (2, 2053)) for dtype in DTYPES]


@pytest.mark.parametrize("rows,cols,dtype", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_index_targets_with_weights_and_smoothing(rows, cols, dtype, reduction, rng):
    x = random_tensor(rng, (rows, cols), dtype, DEVICE)
    weight = (torch.rand(cols, dtype=torch.float64) + 0.5).to(DEVICE, x.dtype)
    _compare("cross_entropy", x, _index_target(rng, rows, cols), weight, dtype, reduction=reduction,
             label_smoothing=0.2)


@pytest.mark.parametrize("rows,cols,dtype", CASES)
def test_plain_class_index_targets(rows, cols, dtype, rng):
    x = random_tensor(rng, (rows, cols), dtype, DEVICE)
    _compare("cross_entropy", x, _index_target(rng, rows, cols), None, dtype, reduction="sum")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [7, 300], ids=lambda c: f"R4-C{c}")
def test_probability_targets(cols, dtype, rng):
    x = random_tensor(rng, (4, cols), dtype, DEVICE)
    probs = torch.softmax(torch.randn(4, cols, dtype=torch.float64), 1).to(DEVICE, x.dtype)
    weight = (torch.rand(cols, dtype=torch.float64) + 0.5).to(DEVICE, x.dtype)
    _compare("cross_entropy", x, probs, weight, dtype, reduction="mean", label_smoothing=0.1)
    _compare("cross_entropy", x, probs, None, dtype, reduction="none")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss(gamma, dtype, rng):
    x = random_tensor(rng, (6, 37), dtype, DEVICE)
    alpha = (torch.rand(37, dtype=torch.float64) + 0.2).to(DEVICE, x.dtype)
    _compare("focal_loss", x, _index_target(rng, 6, 37), alpha, dtype, gamma=gamma, reduction="mean")
    _compare("focal_loss", x, _index_target(rng, 6, 37), None, dtype, gamma=gamma, reduction="none")


def test_a_single_class_has_zero_loss_and_gradient(rng):
    # log_softmax of one class is exactly 0: the relative comparisons above have no scale here
    x = random_tensor(rng, (5, 1), "float32", DEVICE)
    with gk.use_backend("triton"):
        loss, grad = gk.cross_entropy_forward(x, torch.zeros(5, dtype=torch.int64, device=DEVICE),
                                              label_smoothing=0.2)
    assert loss.item() == 0 and torch.allclose(grad, torch.zeros_like(grad), atol=1e-7)


def test_spatial_targets_and_a_single_row(rng):
    x = random_tensor(rng, (2, 5, 3, 4), "float32", DEVICE)
    _compare("cross_entropy", x, torch.from_numpy(rng.integers(0, 5, (2, 3, 4))).to(DEVICE), None, "float32",
             reduction="none")
    x1 = random_tensor(rng, (11,), "float32", DEVICE)
    _compare("cross_entropy", x1, torch.tensor(4, device=DEVICE), None, "float32", reduction="mean")


@pytest.mark.parametrize("launch", tce.all_launches(), ids=lambda l: f"B{l.block_n}-W{l.num_warps}")
def test_every_launch_with_several_chunks(launch, rng):
    cols = 2 * launch.block_n + 5  # two full chunks and a ragged third
    x = random_tensor(rng, (3, cols), "float32", DEVICE, scale=20.0)
    target = _index_target(rng, 3, cols)
    weight = torch.rand(cols, device=DEVICE) + 0.5
    loss = torch.full((3,), float("nan"), device=DEVICE)
    grad = torch.full_like(x, float("nan"))
    scale = torch.ones(1, device=DEVICE)
    tce.launch_rows(x, target, weight, scale, loss, grad, kind="index", ignore_index=-100, label_smoothing=0.1,
                    gamma=0.0, launch=launch)
    with gk.use_backend("numpy"):
        want, want_grad = gk.cross_entropy_forward(as_float64(x), target.numpy(), as_float64(weight),
                                                   reduction="none", label_smoothing=0.1)
    assert_close(loss, want, "float32", "reduction")
    assert_close(grad, want_grad, "float32", "reduction")


def test_a_vocabulary_of_256k_columns(rng):
    cols = 2**18 + 3
    x = random_tensor(rng, (1, cols), "float32", DEVICE, scale=5.0)
    target = torch.tensor([cols - 1], device=DEVICE)
    with gk.use_backend("triton"):
        loss = gk.cross_entropy(x, target)
    want = TF.cross_entropy(x.double().cpu(), target.cpu())
    assert_close(loss, want.numpy(), "float32", "reduction")


def test_empty_batch(rng):
    x = torch.randn(0, 5, device=DEVICE)
    target = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    with gk.use_backend("triton"):
        assert gk.cross_entropy(x, target, reduction="none").shape == (0,)
        assert gk.cross_entropy(x, target, reduction="sum").item() == 0
        assert torch.isnan(gk.cross_entropy(x, target))  # mean of nothing, as torch
        assert gk.cross_entropy_backward(torch.tensor(1.0, device=DEVICE), x, target).shape == (0, 5)


def test_all_ignored_batch_is_nan_with_zero_gradient(rng):
    x = random_tensor(rng, (4, 9), "float32", DEVICE)
    target = torch.full((4,), -100, device=DEVICE)
    with gk.use_backend("triton"):
        loss, grad = gk.cross_entropy_forward(x, target)
    assert torch.isnan(loss) and torch.isnan(TF.cross_entropy(x.cpu(), target.cpu()))
    assert (grad == 0).all()


def test_nll_loss(rng):
    x = torch.log_softmax(random_tensor(rng, (7, 13), "float32", DEVICE), 1)
    weight = torch.rand(13, device=DEVICE) + 0.5
    target = _index_target(rng, 7, 13)
    upstream = torch.randn(7, device=DEVICE)
    with gk.use_backend("triton"):
        loss = gk.nll_loss(x, target, weight, reduction="none")
        grad = gk.nll_loss_backward(upstream, x, target, weight, reduction="none")
    xt = x.detach().cpu().double().requires_grad_()
    want = TF.nll_loss(xt, target.cpu(), weight.cpu().double(), reduction="none")
    (want_grad,) = torch.autograd.grad(want, xt, upstream.cpu().double())
    assert_close(loss, want.detach().numpy(), "float32", "reduction")
    assert_close(grad, want_grad.numpy(), "float32", "reduction")


# ---------------------------------------------------------------------------------------------
# Where a gradient computed in the forward goes wrong


def _autograd_pair(x, target, upstream, **kwargs):
    ours_x = x.detach().clone().requires_grad_()
    theirs_x = x.detach().cpu().double().requires_grad_()
    with gk.use_backend("triton"):
        ours = GF.cross_entropy(ours_x, target, **kwargs)
        (ours_grad,) = torch.autograd.grad(ours, ours_x, upstream)
    weight = kwargs.pop("weight", None)
    theirs = TF.cross_entropy(theirs_x, target.cpu(), None if weight is None else weight.cpu().double(), **kwargs)
    (theirs_grad,) = torch.autograd.grad(theirs, theirs_x, upstream.cpu().double())
    assert_close(ours, theirs.detach().numpy(), "float32", "reduction")
    assert_close(ours_grad, theirs_grad.numpy(), "float32", "reduction")


def test_reduction_none_with_a_non_uniform_upstream_gradient(rng):
    x = random_tensor(rng, (6, 50), "float32", DEVICE)
    upstream = torch.linspace(-2, 3, 6, device=DEVICE)
    _autograd_pair(x, _index_target(rng, 6, 50, ignored=False), upstream, reduction="none")


def test_ignore_index_rows_smoothing_and_weights_under_autograd(rng):
    x = random_tensor(rng, (6, 50), "float32", DEVICE)
    target = _index_target(rng, 6, 50)
    target[1] = target[4] = 7  # a custom ignore_index
    weight = torch.rand(50, device=DEVICE) + 0.5
    _autograd_pair(x, target, torch.tensor(0.7, device=DEVICE), ignore_index=7, label_smoothing=0.25, weight=weight)


def test_input_that_does_not_require_grad_is_left_alone_and_unneeded_work_skipped(rng, monkeypatch):
    x = random_tensor(rng, (4, 20), "float32", DEVICE)
    before = x.clone()
    calls = []
    original = tce.launch_rows
    monkeypatch.setattr(tce, "launch_rows", lambda *a, **k: (calls.append(a[5] is not None), original(*a, **k))[1])
    with gk.use_backend("triton"):
        loss = GF.cross_entropy(x, _index_target(rng, 4, 20))
    assert not loss.requires_grad and calls == [False]  # the loss-only kernel: no gradient written
    assert torch.equal(x, before)
    with gk.use_backend("triton"), torch.no_grad():  # evaluation: requires_grad, but no graph
        GF.cross_entropy(x.requires_grad_(), _index_target(rng, 4, 20))
    assert calls == [False, False]


def test_logits_used_elsewhere_keep_their_values(rng):
    # Liger wrote the gradient over the logits; a second consumer then read gradients
    x = random_tensor(rng, (5, 30), "float32", DEVICE).requires_grad_()
    target = _index_target(rng, 5, 30)
    with gk.use_backend("triton"):
        logits = x * 2
        loss = GF.cross_entropy(logits, target) + logits.square().mean()
        loss.backward()
    logits64 = (x.detach().double() * 2).cpu().requires_grad_()
    want = TF.cross_entropy(logits64, target.cpu()) + logits64.square().mean()
    (g,) = torch.autograd.grad(want, logits64)
    assert_close(x.grad, 2 * g.numpy(), "float32", "reduction")


def test_same_bits_every_run(rng):
    x = random_tensor(rng, (33, 3001), "float32", DEVICE)
    target = _index_target(rng, 33, 3001)
    runs = []
    for _ in range(2):
        with gk.use_backend("triton"):
            loss, grad = gk.cross_entropy_forward(x, target, label_smoothing=0.1)
        runs.append((loss.cpu().numpy().tobytes(), grad.cpu().numpy().tobytes()))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------------
# Linear + cross-entropy through the Triton kernel (torch matmuls per chunk)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy(reduction, rng):
    h = random_tensor(rng, (9, 16), "float32", DEVICE, scale=1.0)
    w = random_tensor(rng, (37, 16), "float32", DEVICE, scale=0.5)
    b = random_tensor(rng, (37,), "float32", DEVICE, scale=0.5)
    target = _index_target(rng, 9, 37)
    upstream = torch.randn(9 if reduction == "none" else (), device=DEVICE)
    with gk.use_backend("triton"):
        loss = gk.linear_cross_entropy(h, w, target, b, reduction=reduction, label_smoothing=0.1, chunk_size=4)
        grads = gk.linear_cross_entropy_backward(upstream, h, w, target, b, reduction=reduction,
                                                 label_smoothing=0.1, chunk_size=4)
    with gk.use_backend("numpy"):
        want = gk.linear_cross_entropy(as_float64(h), as_float64(w), target.numpy(), as_float64(b),
                                       reduction=reduction, label_smoothing=0.1)
        want_grads = gk.linear_cross_entropy_backward(as_float64(upstream), as_float64(h), as_float64(w),
                                                      target.numpy(), as_float64(b), reduction=reduction,
                                                      label_smoothing=0.1)
    assert_close(loss, want, "float32", "reduction")
    for got, expected in zip(grads, want_grads):
        assert_close(got, expected, "float32", "reduction")


def test_compile_cases_cover_every_kind_and_launch():
    cases = list(tce.compile_cases())
    loss_cases = [c for c in cases if c.kernel is tce.cross_entropy_kernel]
    target_cases = [c for c in cases if c.kernel is tce.cross_entropy_target_grad_kernel]
    weight_cases = [c for c in cases if c.kernel in (tce.cross_entropy_weight_partial_kernel,
                                                     tce.cross_entropy_weight_sum_kernel)]
    assert len(loss_cases) + len(target_cases) + len(weight_cases) == len(cases)
    assert {c.name.split("[")[1].split(",")[0].rstrip("]") for c in loss_cases} == set(tce.KINDS)
    assert {c.args["KIND"] for c in loss_cases if c.args["WRITE_LSE"]} == {tce.KINDS["probs"]}
    # the lse-only launch (the weights' gradient without a kept log-sum-exp) at every tier and dtype
    assert {(c.tags["dtype"], c.args["BLOCK_N"]) for c in loss_cases if not c.args["WRITE_LOSS"]} == {
        (dtype, l.block_n) for dtype in tce.GATE_DTYPES for l in tce.all_launches()}
    assert {(c.kernel, c.tags["dtype"]) for c in weight_cases} == {
        (k, dtype) for k in (tce.cross_entropy_weight_partial_kernel, tce.cross_entropy_weight_sum_kernel)
        for dtype in tce.GATE_DTYPES}
    assert {(c.args["HAS_LSE"], c.args["HAS_WEIGHT"], c.tags["dtype"], c.args["BLOCK_N"]) for c in target_cases} == {
        (lse, weight, dtype, l.block_n) for lse in (False, True) for weight in (False, True)
        for dtype in tce.GATE_DTYPES for l in tce.all_launches()}
    for group in (loss_cases, target_cases):
        assert {int(c.tags["block_n"]) for c in group} == {l.block_n for l in tce.all_launches()}
    assert tce.row_launch(1) == tce.all_launches()[0] and tce.row_launch(10**6) == tce.all_launches()[-1]


def test_non_contiguous_inputs_and_probability_targets_over_a_spatial_dim(rng):
    base = random_tensor(rng, (40, 12), "float16", DEVICE)
    _compare("cross_entropy", base.t(), _index_target(rng, 12, 40), None, "float16", reduction="none")
    _compare("cross_entropy", base[:, 1:], _index_target(rng, 40, 11), None, "float16", reduction="mean")
    x = random_tensor(rng, (2, 6, 5), "float32", DEVICE)
    probs = torch.softmax(torch.randn(2, 6, 5, dtype=torch.float64), 1).to(DEVICE, torch.float32)
    _compare("cross_entropy", x, probs, None, "float32", reduction="none", label_smoothing=0.3)


# ---------------------------------------------------------------------------------------------
# The gradient of a probability target: from the forward's log-sum-exp, or recomputing it


def _compare_target_grad(x, target, weight, dtype, **kwargs):
    """``cross_entropy_target_backward`` on Triton (recomputing the log-sum-exp and with the one
    the forward kept) against the float64 reference."""
    upstream_shape = tuple(s for a, s in enumerate(x.shape) if a != (1 if x.dim() > 1 else 0))
    upstream = torch.randn(upstream_shape if kwargs.get("reduction") == "none" else (), dtype=x.dtype, device=DEVICE)
    with gk.use_backend("triton"):
        loss, grad, lse = gk.cross_entropy_forward(x, target, weight, compute_logsumexp=True, **kwargs)
        recomputed = gk.cross_entropy_target_backward(upstream, x, target, weight, **kwargs)
        kept = gk.cross_entropy_target_backward(upstream, x, target, weight, logsumexp=lse, **kwargs)
    with gk.use_backend("numpy"):
        want_loss, want_grad = gk.cross_entropy_forward(_numpy(x), _numpy(target), _numpy(weight), **kwargs)
        want = gk.cross_entropy_target_backward(_numpy(upstream), _numpy(x), _numpy(target), _numpy(weight), **kwargs)
    assert lse.dtype == torch.float32 and lse.shape == upstream_shape
    assert_close(lse, torch.logsumexp(x.double(), 1 if x.dim() > 1 else 0).cpu().numpy(), "float32", "reduction")
    assert recomputed.dtype == kept.dtype == target.dtype and kept.shape == target.shape
    assert_close(loss, want_loss, dtype, "reduction")
    assert_close(grad, want_grad, dtype, "reduction")
    assert_close(recomputed, want, dtype, "reduction")
    assert_close(kept, want, dtype, "reduction")


def _probability_target(rows, cols, dtype):
    return torch.softmax(torch.randn(rows, cols, dtype=torch.float64), 1).to(DEVICE, dtype)


@pytest.mark.parametrize("rows,cols,dtype", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_target_gradient(rows, cols, dtype, reduction, rng):
    x = random_tensor(rng, (rows, cols), dtype, DEVICE)
    weight = (torch.rand(cols, dtype=torch.float64) + 0.5).to(DEVICE, x.dtype)
    _compare_target_grad(x, _probability_target(rows, cols, x.dtype), weight, dtype, reduction=reduction,
                         label_smoothing=0.2)


def test_probability_target_gradient_over_a_spatial_dim_and_a_single_row(rng):
    x = random_tensor(rng, (2, 6, 5), "float32", DEVICE)
    probs = torch.softmax(torch.randn(2, 6, 5, dtype=torch.float64), 1).to(DEVICE, torch.float32)
    _compare_target_grad(x, probs, None, "float32", reduction="sum")
    x1 = random_tensor(rng, (11,), "float32", DEVICE)
    _compare_target_grad(x1, torch.softmax(torch.randn(11), 0).to(DEVICE), None, "float32", reduction="none")


@pytest.mark.parametrize("launch", tce.all_launches(), ids=lambda l: f"B{l.block_n}-W{l.num_warps}")
@pytest.mark.parametrize("kept", [False, True], ids=["recompute", "kept"])
def test_target_gradient_at_every_launch_with_several_chunks(launch, kept, rng):
    cols = 2 * launch.block_n + 5  # two full chunks and a ragged third
    x = random_tensor(rng, (3, cols), "float32", DEVICE, scale=20.0)
    weight = torch.rand(cols, device=DEVICE) + 0.5
    scale = torch.randn(3, device=DEVICE)
    lse = torch.logsumexp(x, 1) if kept else None
    grad = torch.full_like(x, float("nan"))
    tce.launch_target_grad(x, lse, weight, scale, grad, label_smoothing=0.1, launch=launch)
    x64 = as_float64(x)
    want = (torch.logsumexp(torch.from_numpy(x64), 1)[:, None].numpy() - x64) * 0.9 * as_float64(weight)
    assert_close(grad, want * as_float64(scale)[:, None], "float32", "reduction")


def test_target_gradient_of_an_empty_batch_and_zero_classes():
    with gk.use_backend("triton"):
        for shape in ((0, 5), (3, 0)):
            x = torch.randn(*shape, device=DEVICE)
            grad = gk.cross_entropy_target_backward(torch.tensor(1.0, device=DEVICE), x, torch.rand(*shape,
                                                                                                  device=DEVICE))
            assert grad.shape == shape


def test_fused_forward_with_input_and_target_requiring_grad(rng, monkeypatch):
    # one forward launch writes the loss, the input's gradient and the log-sum-exp; backward: one target launch
    x = random_tensor(rng, (6, 40), "float32", DEVICE).requires_grad_()
    target = _probability_target(6, 40, torch.float32).requires_grad_()
    upstream = torch.linspace(-2, 3, 6, device=DEVICE)
    launches = []
    for name in ("launch_rows", "launch_target_grad"):
        original = getattr(tce, name)
        monkeypatch.setattr(tce, name,
                            lambda *a, _o=original, _n=name, **k: (launches.append((_n, a, k)), _o(*a, **k))[1])
    with gk.use_backend("triton"):
        loss = GF.cross_entropy(x, target, reduction="none", label_smoothing=0.1)
        gx, gt = torch.autograd.grad(loss, (x, target), upstream)
    assert [n for n, _, _ in launches] == ["launch_rows", "launch_target_grad"]
    assert launches[0][1][5] is not None and launches[0][2]["lse"] is not None  # gradient and lse in the forward
    assert launches[1][1][1] is not None  # the target kernel read the kept log-sum-exp
    x64, t64 = (a.detach().double().cpu().requires_grad_() for a in (x, target))
    want = TF.cross_entropy(x64, t64, reduction="none", label_smoothing=0.1)
    wx, wt = torch.autograd.grad(want, (x64, t64), upstream.double().cpu())
    assert_close(loss, want.detach().numpy(), "float32", "reduction")
    assert_close(gx, wx.numpy(), "float32", "reduction")
    assert_close(gt, wt.numpy(), "float32", "reduction")


# ---------------------------------------------------------------------------------------------
# The gradient of the class weights of probability targets: a two-stage column sum


def _compare_weight_grad(x, target, dtype, **kwargs):
    """``cross_entropy_weight_backward`` on Triton (recomputing the log-sum-exp and with the one
    the forward kept) against the float64 reference."""
    upstream_shape = tuple(s for a, s in enumerate(x.shape) if a != (1 if x.dim() > 1 else 0))
    upstream = torch.randn(upstream_shape if kwargs.get("reduction") == "none" else (), dtype=x.dtype, device=DEVICE)
    with gk.use_backend("triton"):
        _, _, lse = gk.cross_entropy_forward(x, target, compute_logsumexp=True, compute_grad=False, **kwargs)
        recomputed = gk.cross_entropy_weight_backward(upstream, x, target, **kwargs)
        kept = gk.cross_entropy_weight_backward(upstream, x, target, logsumexp=lse, **kwargs)
    with gk.use_backend("numpy"):
        want = gk.cross_entropy_weight_backward(_numpy(upstream), _numpy(x), _numpy(target), **kwargs)
    classes = x.shape[1 if x.dim() > 1 else 0]
    for got in (recomputed, kept):
        assert got.dtype == x.dtype and got.shape == (classes,)
        assert_close(got, want, dtype, "reduction")


@pytest.mark.parametrize("rows,cols,dtype", CASES + [pytest.param(300, 131, "float32", id="R300-C131-float32")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_weight_gradient(rows, cols, dtype, reduction, rng):
    # 300 rows: two row blocks of the first stage (256 rows each) and a ragged second; 131 and 257
    # columns: a ragged last column block
    x = random_tensor(rng, (rows, cols), dtype, DEVICE)
    _compare_weight_grad(x, _probability_target(rows, cols, x.dtype), dtype, reduction=reduction,
                         label_smoothing=0.2)


def test_class_weight_gradient_over_a_spatial_dim_and_a_single_row(rng):
    x = random_tensor(rng, (2, 6, 5), "float32", DEVICE)
    probs = torch.softmax(torch.randn(2, 6, 5, dtype=torch.float64), 1).to(DEVICE, torch.float32)
    _compare_weight_grad(x, probs, "float32", reduction="sum")
    x1 = random_tensor(rng, (11,), "float32", DEVICE)
    _compare_weight_grad(x1, torch.softmax(torch.randn(11), 0).to(DEVICE), "float32", reduction="none")


def test_class_weight_gradient_stages_with_small_blocks(rng):
    # several row blocks and column blocks, every stage-1 partial written before stage 2 reads it
    launch = tce.WeightLaunch(rows_per_program=32, block_r=16, block_c=16, num_warps=1)
    rows, cols = 75, 37
    x = random_tensor(rng, (rows, cols), "float32", DEVICE, scale=5.0)
    target = torch.rand(rows, cols, device=DEVICE)
    lse = torch.logsumexp(x, 1)
    scale = torch.randn(rows, device=DEVICE)
    blocks = tce.weight_row_blocks(rows, launch)
    partial = torch.full((blocks, cols), float("nan"), device=DEVICE)
    out = torch.full((cols,), float("nan"), device=DEVICE)
    tce.launch_weight_grad(x, target, lse, scale, partial, out, label_smoothing=0.1, launch=launch)
    x64, t64, s64 = as_float64(x), as_float64(target), as_float64(scale)
    term = (0.9 * t64 + 0.1 / cols) * (torch.logsumexp(torch.from_numpy(x64), 1)[:, None].numpy() - x64) * s64[:, None]
    assert blocks == 3
    assert_close(partial, [term[32 * b:32 * (b + 1)].sum(0) for b in range(3)], "float32", "reduction")
    assert_close(out, term.sum(0), "float32", "reduction")


def test_class_weight_gradient_of_an_empty_batch_and_zero_classes():
    with gk.use_backend("triton"):
        grad = gk.cross_entropy_weight_backward(torch.tensor(1.0, device=DEVICE), torch.randn(0, 5, device=DEVICE),
                                                torch.rand(0, 5, device=DEVICE))
        assert grad.shape == (5,) and (grad == 0).all()  # stage 2 alone: the zeros of an empty sum
        grad = gk.cross_entropy_weight_backward(torch.tensor(1.0, device=DEVICE), torch.randn(3, 0, device=DEVICE),
                                                torch.rand(3, 0, device=DEVICE))
        assert grad.shape == (0,)


def test_class_weight_gradient_is_the_same_bits_every_run(rng):
    x = random_tensor(rng, (600, 70), "float32", DEVICE)
    target = _probability_target(600, 70, torch.float32)
    upstream = torch.randn(600, device=DEVICE)
    with gk.use_backend("triton"):
        runs = [gk.cross_entropy_weight_backward(upstream, x, target, reduction="none").cpu().numpy().tobytes()
                for _ in range(2)]
    assert runs[0] == runs[1]


def test_fused_forward_with_input_and_weight_requiring_grad(rng, monkeypatch):
    # one forward launch writes the loss, the input's gradient and the log-sum-exp; backward: the weights' stages
    x = random_tensor(rng, (6, 40), "float32", DEVICE).requires_grad_()
    target = _probability_target(6, 40, torch.float32)
    weight = (torch.rand(40, device=DEVICE) + 0.5).requires_grad_()
    upstream = torch.linspace(-2, 3, 6, device=DEVICE)
    launches = []
    for name in ("launch_rows", "launch_weight_grad"):
        original = getattr(tce, name)
        monkeypatch.setattr(tce, name,
                            lambda *a, _o=original, _n=name, **k: (launches.append((_n, a, k)), _o(*a, **k))[1])
    with gk.use_backend("triton"):
        loss = GF.cross_entropy(x, target, weight, reduction="none", label_smoothing=0.1)
        gx, gw = torch.autograd.grad(loss, (x, weight), upstream)
    assert [n for n, _, _ in launches] == ["launch_rows", "launch_weight_grad"]
    assert launches[0][2]["lse"] is not None and launches[1][1][2] is not None  # the kept log-sum-exp read
    x64, w64 = (a.detach().double().cpu().requires_grad_() for a in (x, weight))
    want = TF.cross_entropy(x64, target.double().cpu(), w64, reduction="none", label_smoothing=0.1)
    wx, ww = torch.autograd.grad(want, (x64, w64), upstream.double().cpu())
    assert_close(gx, wx.numpy(), "float32", "reduction")
    assert_close(gw, ww.numpy(), "float32", "reduction")
