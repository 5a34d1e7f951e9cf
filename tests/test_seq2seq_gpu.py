"""On a CUDA GPU (skipped elsewhere): Seq2Seq on the Triton kernels against its torch.nn twin on
the same device and weights, decoding on the device, and the demo's --quick run on CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from gpukernels.tools import cli, demo_seq2seq
from gpukernels.torch.models import Seq2Seq
from gpukernels.torch.models.seq2seq import ATTENTIONS, CELLS

pytestmark = pytest.mark.gpu

KINDS = [(cell, attention) for cell in CELLS for attention in ATTENTIONS]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Both twins in true fp32, so they can be held to fp32's matmul tolerance."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.parametrize("cell,attention", KINDS, ids=[f"{c}-{a}" for c, a in KINDS])
def test_cuda_forward_backward_match_torch_twin(cell, attention):
    torch.manual_seed(0)
    ours = Seq2Seq(29, 17, 24, 48, 2, cell, attention).cuda()
    twin = Seq2Seq(29, 17, 24, 48, 2, cell, attention, modules="torch").cuda()
    twin.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 31, (37,), generator=generator)
    src = torch.randint(3, 29, (37, 31), generator=generator)
    src[torch.arange(31)[None, :] >= lengths[:, None]] = 0
    tgt = torch.randint(3, 17, (37, 11), generator=generator)
    src, tgt = src.cuda(), tgt.cuda()
    losses = []
    for model in (ours, twin):
        loss = model.loss(model(src, lengths, tgt), tgt)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    twin_parameters = dict(twin.named_parameters())
    for name, parameter in ours.named_parameters():
        reference = twin_parameters[name].grad
        error = (parameter.grad - reference).norm() / reference.norm().clamp_min(1e-30)
        assert error < 1e-4, (name, float(error))
    greedy = ours.greedy(src, lengths, max_length=12)
    beam = ours.beam_search(src, lengths, beam_size=1, max_length=12, length_penalty=0.0)
    assert greedy.tokens.is_cuda and torch.equal(greedy.tokens, beam.tokens)
    assert ours.beam_search(src, lengths, beam_size=4, max_length=12).tokens.shape[0] == 37


def test_cuda_quick_demo(tmp_path):
    assert cli.main(["demo", "seq2seq", "--quick", "--device", "cuda", "--compare-torch", "--no-plots",
                     "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["backend"] == "triton" and metrics["device"] == "cuda"
    assert metrics["sequence_accuracy"] >= demo_seq2seq.QUICK_SEQUENCE_ACCURACY
    print(f"CUDA --quick: ours {metrics['seconds_per_step'] * 1e3:.1f} ms/step, "
          f"torch.nn {metrics['torch']['seconds_per_step'] * 1e3:.1f} ms/step")
