"""gpukernels.torch normalisation: the autograd Functions (gradcheck, every gradient against
torch.nn.functional) and the LayerNorm/RMSNorm modules against torch.nn (parameters, state_dict,
outputs and gradients), on the reference (CPU tensors) and on the Triton kernels (interpreter
here, GPU where there is one)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gpukernels as gk
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from _helpers import as_float64, assert_close
from conftest import DEVICE

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")


def _double(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_gradcheck_every_function():
    x, r, w, b = _double(3, 2, 5), _double(3, 2, 5), _double(2, 5), _double(2, 5)
    assert torch.autograd.gradcheck(lambda x, w, b: GF.layer_norm(x, (2, 5), w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: GF.rms_norm(x, (2, 5), w), (x, w))
    assert torch.autograd.gradcheck(lambda x, r, w, b: GF.add_layer_norm(x, r, (2, 5), w, b), (x, r, w, b))
    assert torch.autograd.gradcheck(lambda x, r, w: GF.add_rms_norm(x, r, (2, 5), w), (x, r, w))
    assert torch.autograd.gradcheck(lambda x: GF.layer_norm(x, 5), (x,))
    assert torch.autograd.gradcheck(lambda x, b: GF.layer_norm(x, 5, None, b), (x, _double(5)))


def test_fused_residual_gradients_match_add_then_norm():
    x, r, w, b = _double(4, 6), _double(4, 6), _double(6), _double(6)
    dy, ds = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    y, s = GF.add_layer_norm(x, r, 6, w, b)
    ours = torch.autograd.grad((y, s), (x, r, w, b), (dy, ds))
    s_ref = x + r
    y_ref = F.layer_norm(s_ref, (6,), w, b)
    theirs = torch.autograd.grad((y_ref, s_ref), (x, r, w, b), (dy, ds))
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-12)
    # only the normalised output used: the sum's gradient is absent
    y, s = GF.add_rms_norm(x, r, 6, w)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx_ref,) = torch.autograd.grad(F.rms_norm(x + r, (6,), w).sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)


MODULES = [
    pytest.param(lambda: (gnn.LayerNorm(8), torch.nn.LayerNorm(8)), id="LayerNorm"),
    pytest.param(lambda: (gnn.LayerNorm((3, 8), bias=False), torch.nn.LayerNorm((3, 8), bias=False)),
                 id="LayerNorm-nobias"),
    pytest.param(lambda: (gnn.LayerNorm(8, elementwise_affine=False), torch.nn.LayerNorm(8, elementwise_affine=False)),
                 id="LayerNorm-noaffine"),
    pytest.param(lambda: (gnn.RMSNorm(8), torch.nn.RMSNorm(8)), id="RMSNorm"),
    pytest.param(lambda: (gnn.RMSNorm([3, 8], eps=1e-6), torch.nn.RMSNorm([3, 8], eps=1e-6)), id="RMSNorm-eps"),
    pytest.param(lambda: (gnn.RMSNorm(8, elementwise_affine=False), torch.nn.RMSNorm(8, elementwise_affine=False)),
                 id="RMSNorm-noaffine"),
]


@pytest.mark.parametrize("make", MODULES)
def test_modules_are_drop_in_float64(make):
    ours, theirs = make()
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    ours, theirs = ours.double(), theirs.double()
    x = torch.randn(5, 3, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, 8, dtype=torch.float64)
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], upstream)
    grads_ref = torch.autograd.grad(y_ref, [x, *theirs.parameters()], upstream)
    for a, t in zip(grads, grads_ref):
        torch.testing.assert_close(a, t, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_modules_train_on_the_triton_kernels(dtype):
    torch.manual_seed(0)
    ours = gnn.LayerNorm(40).to(DEVICE, dtype)
    rms = gnn.RMSNorm(40).to(DEVICE, dtype)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    x = torch.randn(6, 40, device=DEVICE, dtype=dtype, requires_grad=True)
    upstream = torch.randn(6, 40, dtype=torch.float64)  # not y^2: sum(rms_norm(h)^2) does not depend on h
    with gk.use_backend("triton"):
        y = rms(ours(x))
        (y.float() * upstream.to(DEVICE, torch.float32)).sum().backward()
    x_ref = x.detach().double().cpu().requires_grad_()
    ref_ln = torch.nn.LayerNorm(40).double()
    ref_rms = torch.nn.RMSNorm(40, eps=torch.finfo(torch.float32).eps).double()  # torch's eps=None for fp32/bf16
    ref_ln.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})
    ref_rms.load_state_dict({k: v.double().cpu() for k, v in rms.state_dict().items()})
    y_ref = ref_rms(ref_ln(x_ref))
    (y_ref * upstream).sum().backward()
    name = "float32" if dtype == torch.float32 else "bfloat16"
    assert_close(y, y_ref.detach().numpy(), name, "reduction")
    # bf16: the intermediate output and the gradients are rounded at each step
    kind_dtype = name if dtype == torch.float32 else "bfloat16"
    assert_close(x.grad, x_ref.grad.numpy(), kind_dtype, "reduction")
    assert_close(ours.weight.grad, ref_ln.weight.grad.numpy(), kind_dtype, "reduction")
    assert_close(ours.bias.grad, ref_ln.bias.grad.numpy(), kind_dtype, "reduction")
    assert ours.weight.grad.dtype == dtype


def test_functional_add_norm_on_triton_returns_both_outputs_with_gradients():
    x = torch.randn(3, 16, device=DEVICE, requires_grad=True)
    r = torch.randn(3, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(16, device=DEVICE, requires_grad=True)
    with gk.use_backend("triton"):
        y, s = GF.add_rms_norm(x, r, 16, w, 1e-6)
        (y.sum() + (s * s).sum()).backward()
    xd, rd, wd = (t.detach().double().cpu().requires_grad_() for t in (x, r, w))
    sd = xd + rd
    (F.rms_norm(sd, (16,), wd, 1e-6).sum() + (sd * sd).sum()).backward()
    assert_close(x.grad, xd.grad.numpy(), "float32", "reduction")
    assert_close(r.grad, rd.grad.numpy(), "float32", "reduction")
    assert_close(w.grad, wd.grad.numpy(), "float32", "reduction")
    assert_close(s, as_float64(x) + as_float64(r), "float32")
