"""Bad input to the optimizer steps and clipping: a TypeError/ValueError naming the argument,
raised before anything runs, with every parameter and state array left exactly as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpukernels as gk


def _arrays(rng, sizes=(3, 5), dtype=np.float32):
    return [rng.standard_normal(n).astype(dtype) for n in sizes]


def _adam_args(rng):
    return dict(params=_arrays(rng), grads=_arrays(rng), exp_avgs=_arrays(rng), exp_avg_sqs=[np.abs(a) for a in _arrays(rng)])


def _snapshot(args):
    copy = lambda a: None if a is None else a.numpy().copy() if isinstance(a, torch.Tensor) else np.array(a, copy=True)
    return {k: [copy(a) for a in v] for k, v in args.items() if isinstance(v, list)}


def _unchanged(args, before):
    for key, arrays in before.items():
        for a, b in zip(args[key], arrays):
            assert (a is None and b is None) or np.array_equal(np.asarray(a), b, equal_nan=True), key


ADAM_BAD = [
    pytest.param(lambda a, rng: a.update(grads=a["grads"][:1]), dict(step=1), ValueError, "grads has 1 entries", id="short-grads"),
    pytest.param(lambda a, rng: a["grads"].__setitem__(1, rng.standard_normal(4).astype(np.float32)), dict(step=1),
                 ValueError, r"grads\[1\] has shape", id="grad-shape"),
    pytest.param(lambda a, rng: a["grads"].__setitem__(0, a["grads"][0].astype(np.float64)), dict(step=1),
                 TypeError, r"grads\[0\] has dtype float64", id="grad-dtype"),
    pytest.param(lambda a, rng: a["grads"].__setitem__(0, torch.from_numpy(a["grads"][0])), dict(step=1),
                 TypeError, r"grads\[0\] is a torch array", id="grad-library"),
    pytest.param(lambda a, rng: a["exp_avgs"].__setitem__(1, np.zeros(2, np.float32)), dict(step=1),
                 ValueError, r"exp_avgs\[1\] has shape", id="state-shape"),
    pytest.param(lambda a, rng: a["exp_avg_sqs"].__setitem__(0, [1.0, 2.0, 3.0]), dict(step=1),
                 TypeError, r"exp_avg_sqs\[0\] must be", id="state-not-array"),
    pytest.param(lambda a, rng: None, dict(step=1, lr=-0.1), ValueError, "lr must be", id="negative-lr"),
    pytest.param(lambda a, rng: None, dict(step=1, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\)", id="beta-1"),
    pytest.param(lambda a, rng: None, dict(step=1, betas=(-0.1, 0.9)), ValueError, r"betas\[0\]", id="beta-negative"),
    pytest.param(lambda a, rng: None, dict(step=1, eps=-1e-8), ValueError, "eps must be", id="negative-eps"),
    pytest.param(lambda a, rng: None, dict(step=1, weight_decay=math.nan), ValueError, "weight_decay", id="nan-wd"),
    pytest.param(lambda a, rng: None, dict(step=0), ValueError, "step counts", id="step-0"),
    pytest.param(lambda a, rng: None, dict(step="1"), TypeError, "step must be", id="step-str"),
    pytest.param(lambda a, rng: None, dict(step=1, amsgrad=True), ValueError, "needs max_exp_avg_sqs", id="amsgrad-no-max"),
    pytest.param(lambda a, rng: None, dict(step=1, found_inf=np.zeros(2, np.float32)), ValueError,
                 "found_inf must hold exactly one", id="found-inf-shape"),
    pytest.param(lambda a, rng: None, dict(step=1, grad_scale=np.ones(1, np.float64)), TypeError,
                 "grad_scale has dtype float64", id="grad-scale-dtype"),
    pytest.param(lambda a, rng: None, dict(step=1, master_params=[np.zeros(3, np.float16), np.zeros(5, np.float16)]),
                 TypeError, r"master_params\[0\] has dtype float16", id="master-dtype"),
    pytest.param(lambda a, rng: None, dict(step=1, lr=np.full(2, 0.1, np.float32)), ValueError,
                 "lr must hold exactly one", id="lr-array-shape"),
    pytest.param(lambda a, rng: None, dict(step=1, lr=np.full(1, 0.1, np.float64)), TypeError,
                 "lr has dtype float64", id="lr-array-dtype"),
    pytest.param(lambda a, rng: None, dict(step=1, lr=torch.full((1,), 0.1)), TypeError,
                 "lr is a torch array", id="lr-array-library"),
]


@pytest.mark.parametrize("mutate,kwargs,error,match", ADAM_BAD)
def test_adam_step_rejects_before_writing(mutate, kwargs, error, match, rng):
    args = _adam_args(rng)
    mutate(args, rng)
    before = _snapshot(args)
    with pytest.raises(error, match=match):
        gk.adam_step(args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"], **kwargs)
    _unchanged(args, before)


def test_sgd_rejections(rng):
    params, grads = _arrays(rng), _arrays(rng)
    buffers = [None, None]
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        gk.sgd_step(params, grads, buffers, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        gk.sgd_step(params, grads, buffers, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="momentum_buffer_list"):
        gk.sgd_step(params, grads, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum must be"):
        gk.sgd_step(params, grads, buffers, lr=0.1, momentum=-0.5)
    assert buffers == [None, None]  # no buffer is created by a rejected step
    assert all(np.array_equal(a, b) for a, b in zip(params, before))


def test_rmsprop_rejections(rng):
    params, grads, sq = _arrays(rng), _arrays(rng), [np.abs(a) for a in _arrays(rng)]
    before = [p.copy() for p in params + sq]
    with pytest.raises(ValueError, match="centered=True needs grad_avgs"):
        gk.rmsprop_step(params, grads, sq, centered=True)
    with pytest.raises(ValueError, match="momentum > 0 needs momentum_buffer_list"):
        gk.rmsprop_step(params, grads, sq, momentum=0.9)
    with pytest.raises(ValueError, match="alpha must be"):
        gk.rmsprop_step(params, grads, sq, alpha=-1.0)
    with pytest.raises(TypeError, match="centered must be True or False"):
        gk.rmsprop_step(params, grads, sq, centered=1)
    assert all(np.array_equal(a, b) for a, b in zip(params + sq, before))


def test_clip_rejections(rng):
    grads = _arrays(rng)
    before = [g.copy() for g in grads]
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        gk.clip_grad_norm_(grads, 1.0, norm_type=0.0)
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        gk.clip_grad_norm_(grads, "1")
    with pytest.raises(TypeError, match=r"grads\[1\] is a torch array"):
        gk.clip_grad_norm_([grads[0], torch.zeros(2)], 1.0)
    with pytest.raises(ValueError, match="grads is empty"):
        gk.clip_grad_norm_([], 1.0)
    with pytest.raises(RuntimeError, match="non-finite"):
        gk.clip_grad_norm_([np.array([1.0, np.inf], np.float32)], 1.0, error_if_nonfinite=True)
    assert all(np.array_equal(a, b) for a, b in zip(grads, before))


def test_nan_gradients_with_found_inf_skip_and_without_propagate(rng):
    """GradScaler's documented skip: with found_inf set nothing moves; without it, NaN reaches the
    parameters as torch.optim lets it."""
    args = _adam_args(rng)
    args["grads"][0][1] = np.nan
    before = _snapshot(args)
    gk.adam_step(args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"], step=1,
                 found_inf=np.ones(1, np.float32))
    _unchanged(args, before)
    gk.adam_step(args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"], step=1)
    assert np.isnan(args["params"][0][1]) and np.isfinite(args["params"][1]).all()


def test_bad_input_through_the_triton_backend_writes_nothing(rng):
    params = [torch.randn(5), torch.randn(3)]
    grads = [torch.randn(5), torch.randn(3, dtype=torch.float16)]
    state = [torch.zeros(5), torch.zeros(3)]
    before = [t.clone() for t in params + state]
    with gk.use_backend("triton"), pytest.raises(TypeError, match=r"grads\[1\] has dtype float16"):
        gk.adam_step(params, grads, state, [s.clone() for s in state], step=1)
    assert all(torch.equal(a, b) for a, b in zip(params + state, before))


def test_checks_are_cached_by_the_facts_they_read_so_a_hit_is_never_stale(rng):
    """A step's array checks are skipped when a call with arrays of the same type, shape, dtype
    and device passed them: a tensor changed in place since (cast, resized, moved) is checked
    again and rejected before anything is written, and the numbers are checked on every call."""
    params = [torch.from_numpy(a) for a in _arrays(rng)]
    grads = [torch.from_numpy(a) for a in _arrays(rng)]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    gk.adam_step(params, grads, m, v, step=1)
    gk.adam_step(params, grads, m, v, step=2)  # the same facts: the cached pass
    with pytest.raises(ValueError, match="step counts"):
        gk.adam_step(params, grads, m, v, step=0)
    before = [t.clone() for t in params + m + v]
    params[1].data = params[1].data.double()  # what model.double() does to a parameter
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float32 but params\[1\] has dtype float64"):
        gk.adam_step(params, grads, m, v, step=3)
    params[1].data = params[1].data.float()
    v[0].resize_(2)  # a state tensor shrunk in place: the kernels would write past its end
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\] has shape \(2,\) but params\[0\] has shape \(3,\)"):
        gk.adam_step(params, grads, m, v, step=3)
    v[0].resize_(3)
    assert all(torch.equal(a, b) for a, b in zip(params + m, before[:4]))  # nothing written


def test_a_first_sgd_step_creates_buffers_only_after_every_check(rng):
    params, grads = _arrays(rng), _arrays(rng)
    buffers = [None, None]
    gk.sgd_step(params, grads, buffers, lr=0.1, momentum=0.9)  # passes: buffers made
    assert all(b is not None for b in buffers)
    fresh = [None, None]
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float64"):
        gk.sgd_step(params, [grads[0], grads[1].astype(np.float64)], fresh, lr=0.1, momentum=0.9)
    assert fresh == [None, None]
