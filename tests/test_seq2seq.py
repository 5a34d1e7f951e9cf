"""gpukernels.torch.models.Seq2Seq: against its torch.nn twin (float64, same weights), masks,
decoding (greedy, beam search), teacher forcing, state_dict, training, the ops on the hot path,
bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch

from gpukernels import _dispatch
from gpukernels.tools import demo_seq2seq
from gpukernels.torch.models import Seq2Seq, teacher_forcing_ratio
from gpukernels.torch.models.seq2seq import ATTENTIONS, CELLS

SRC_VOCAB, TGT_VOCAB, PAD, BOS, EOS = 11, 13, 0, 1, 2
KINDS = [(cell, attention) for cell in CELLS for attention in ATTENTIONS]
KIND_IDS = [f"{cell}-{attention}" for cell, attention in KINDS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is fastest and keeps a busy machine from spin-waiting."""
    threads = torch.get_num_threads()
    demo_seq2seq.limit_threads(1)
    yield
    demo_seq2seq.limit_threads(threads)


def _model(cell="lstm", attention="additive", seed=0, dtype=torch.float64, **options):
    torch.manual_seed(seed)
    return Seq2Seq(SRC_VOCAB, TGT_VOCAB, embedding_dim=6, hidden_size=8, cell=cell, attention=attention,
                   **options).to(dtype)


def _batch(lengths=(7, 3, 5, 1), target_length=5, seed=1):
    """Random source ids (never padding) up to each length, padding after; random targets."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    src = torch.randint(3, SRC_VOCAB, (len(lengths), int(lengths.max())), generator=generator)
    src[torch.arange(src.shape[1])[None, :] >= lengths[:, None]] = PAD
    tgt = torch.randint(3, TGT_VOCAB, (len(lengths), target_length), generator=generator)
    return src, lengths, tgt


# ---------------------------------------------------------------------------------------------
# Against the torch.nn twin


@pytest.mark.parametrize("cell,attention", KINDS, ids=KIND_IDS)
def test_forward_backward_match_torch_twin(cell, attention):
    ours = _model(cell, attention, num_layers=2)
    twin = Seq2Seq(SRC_VOCAB, TGT_VOCAB, 6, 8, 2, cell, attention, modules="torch").double()
    twin.load_state_dict(ours.state_dict())
    src, lengths, tgt = _batch()
    tgt[1, 3:] = PAD  # padded targets are ignored by the loss in both
    losses = []
    for model in (ours, twin):
        loss = model.loss(model(src, lengths, tgt), tgt, label_smoothing=0.1)
        loss.backward()
        losses.append(loss)
    assert torch.isfinite(losses[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    twin_parameters = dict(twin.named_parameters())
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, twin_parameters[name].grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("cell,attention", KINDS, ids=KIND_IDS)
def test_logits_shape_and_dtype(cell, attention):
    model = _model(cell, attention, dtype=torch.float32, bidirectional=attention != "dot")
    src, lengths, tgt = _batch(lengths=(2, 5, 3), target_length=4)
    logits = model(src, lengths, tgt)
    assert logits.shape == (3, 4, TGT_VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# Masks and padding


@pytest.mark.parametrize("cell,attention", KINDS, ids=KIND_IDS)
def test_padding_is_never_attended_and_changes_nothing(cell, attention):
    model = _model(cell, attention)
    src, lengths, tgt = _batch(lengths=(2, 7, 4))
    result = model.greedy(src, lengths, max_length=6)
    beyond = torch.arange(src.shape[1])[None, None, :] >= lengths[:, None, None]
    assert (result.attention.masked_select(beyond) == 0).all()
    logits = model(src, lengths, tgt)
    # Other ids in the padded positions, and a batch-mate with a much longer source: no change.
    noisy = src.clone()
    noisy[noisy == PAD] = 5
    torch.testing.assert_close(model(noisy, lengths, tgt), logits, rtol=0, atol=0)
    longer, longer_lengths, _ = _batch(lengths=(13,), seed=7)
    wide = torch.zeros(4, 13, dtype=torch.int64)
    wide[:3, :src.shape[1]] = src
    wide[3] = longer[0]
    wide_logits = model(wide, torch.cat((lengths, longer_lengths)), torch.cat((tgt, tgt[:1])))
    torch.testing.assert_close(wide_logits[:3], logits, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("cell,attention", KINDS, ids=KIND_IDS)
def test_beam_search_with_beam_one_is_greedy(cell, attention):
    model = _model(cell, attention)
    with torch.no_grad():
        model.output.bias[EOS] += 1.5  # some sequences end early, some run to max_length
    src, lengths, _ = _batch(lengths=(7, 3, 5, 1, 6))
    greedy = model.greedy(src, lengths, max_length=9)
    beam = model.beam_search(src, lengths, beam_size=1, max_length=9, length_penalty=0.0)
    assert torch.equal(greedy.tokens, beam.tokens)
    assert torch.equal(greedy.lengths, beam.lengths)
    torch.testing.assert_close(greedy.scores, beam.scores, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(greedy.attention, beam.attention, rtol=0, atol=0)


def _check_stops_at_eos(result, max_length):
    for row, length in zip(result.tokens.tolist(), result.lengths.tolist()):
        ended = EOS in row
        assert length == (row.index(EOS) + 1 if ended else len(row))
        assert all(token == PAD for token in row[length:])
        assert PAD not in row[:length]
        assert length <= max_length


@pytest.mark.parametrize("beam_size", [1, 3], ids=["K1", "K3"])
def test_search_stops_at_eos_per_sequence(beam_size, monkeypatch):
    """Sequence b's hypotheses can end (EOS) only from step stops[b] on, and must then: the best
    ends exactly there, padded after, and the search stops at the longest, not at max_length."""
    model = _model("gru", "general", seed=3)
    stops = torch.tensor([3, 1, 6, 2, 9, 4])
    src, lengths, _ = _batch(lengths=(7, 3, 5, 1, 6, 2), seed=4)
    real_step, step = model.decode_step, [0]

    def eos_at_stop(token, feed, state, outputs, mask):
        logits, feed, state, weights = real_step(token, feed, state, outputs, mask)
        step[0] += 1
        ending = (stops <= step[0]).repeat_interleave(len(token) // len(stops))
        logits = logits.clone()
        logits[:, PAD] = -1e4
        logits[:, EOS] = torch.where(ending, 1e4, -1e4)
        return logits, feed, state, weights

    monkeypatch.setattr(model, "decode_step", eos_at_stop)
    max_length = 40
    search = model.greedy if beam_size == 1 else model.beam_search
    result = search(src, lengths, max_length=max_length, **({} if beam_size == 1 else {"beam_size": beam_size}))
    _check_stops_at_eos(result, max_length)
    assert result.lengths.tolist() == stops.tolist()
    assert (result.tokens.gather(1, (stops - 1)[:, None])[:, 0] == EOS).all()
    assert result.tokens.shape[1] == int(stops.max()) and step[0] == int(stops.max())


@pytest.mark.parametrize("length_penalty", [0.0, 1.0], ids=["alpha0", "alpha1"])
def test_beam_score_is_the_normalised_log_probability(length_penalty):
    model = _model("lstm", "additive", seed=5)
    with torch.no_grad():
        model.output.bias[EOS] += 1.0
        model.output.bias[PAD] -= 30.0
    src, lengths, _ = _batch(lengths=(6, 2, 4), seed=6)
    result = model.beam_search(src, lengths, beam_size=4, max_length=12, length_penalty=length_penalty)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(src, lengths, result.tokens), dim=-1)
    picked = log_probs.gather(-1, result.tokens[..., None])[..., 0].masked_fill(result.tokens == PAD, 0.0).sum(-1)
    expected = picked / result.lengths.double() ** length_penalty
    torch.testing.assert_close(result.scores, expected, rtol=1e-9, atol=1e-9)
    greedy = model.greedy(src, lengths, max_length=12)
    if length_penalty == 0.0:  # beam 4 keeps the greedy path among its candidates until it is beaten
        assert (result.scores >= greedy.scores - 1e-9).all()


# ---------------------------------------------------------------------------------------------
# Teacher forcing


def test_teacher_forcing_schedule():
    assert teacher_forcing_ratio(0, 100) == 1.0
    assert teacher_forcing_ratio(50, 100, 1.0, 0.5) == pytest.approx(0.75)
    assert teacher_forcing_ratio(100, 100, 1.0, 0.5) == pytest.approx(0.5)
    assert teacher_forcing_ratio(500, 100, 0.9, 0.2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="total_steps"):
        teacher_forcing_ratio(1, 0)
    with pytest.raises(ValueError, match="start and end"):
        teacher_forcing_ratio(1, 10, 1.5)


def test_teacher_forcing_ratio_zero_feeds_own_predictions():
    model = _model("lstm", "dot", seed=2)
    with torch.no_grad():
        model.output.bias[PAD] -= 30.0
        model.output.bias[EOS] -= 30.0  # run the full length, so the greedy tokens cover every step
    src, lengths, tgt = _batch()
    with torch.no_grad():
        own = model(src, lengths, tgt, teacher_forcing_ratio=0.0)
        forced = model(src, lengths, tgt, teacher_forcing_ratio=1.0)
    greedy = model.greedy(src, lengths, max_length=tgt.shape[1])
    assert torch.equal(own.argmax(-1), greedy.tokens)
    torch.testing.assert_close(own[:, 0], forced[:, 0], rtol=0, atol=0)  # both start from BOS
    assert (own[:, 1:] - forced[:, 1:]).abs().amax(-1).gt(1e-6).all()  # then gold inputs change every step
    # A ratio in between mixes the two, drawn from the generator: reproducible.
    first = model(src, lengths, tgt, 0.5, torch.Generator().manual_seed(9))
    again = model(src, lengths, tgt, 0.5, torch.Generator().manual_seed(9))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# state_dict


def test_state_dict_round_trip():
    model = _model("gru", "additive", num_layers=2)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = Seq2Seq(SRC_VOCAB, TGT_VOCAB, 6, 8, 2, "gru", "additive").double()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    twin = Seq2Seq(SRC_VOCAB, TGT_VOCAB, 6, 8, 2, "gru", "additive", modules="torch").double()
    twin.load_state_dict(restored.state_dict())
    assert set(twin.state_dict()) == set(model.state_dict())
    src, lengths, tgt = _batch()
    expected = model(src, lengths, tgt)
    torch.testing.assert_close(restored(src, lengths, tgt), expected, rtol=0, atol=0)
    torch.testing.assert_close(twin(src, lengths, tgt), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Training, and which ops it runs


def _copy_batch(generator, batch=16, length=5):
    """Copy a random sequence: the target is the source shifted into the target vocabulary."""
    src = torch.randint(3, SRC_VOCAB, (batch, length), generator=generator)
    tgt = torch.cat((src, torch.full((batch, 1), EOS)), dim=1)
    return src, torch.full((batch,), length), tgt


def _train_step(model, optimizer, clip, src, lengths, tgt):
    loss = model.loss(model(src, lengths, tgt), tgt)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def test_short_training_lowers_the_loss():
    from gpukernels.torch.nn.utils import clip_grad_norm_
    from gpukernels.torch.optim import AdamW

    model = _model("lstm", "additive", dtype=torch.float32)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = [_train_step(model, optimizer, clip_grad_norm_, *_copy_batch(generator)) for _ in range(40)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # 2.58 -> 2.10 measured


def test_training_step_runs_every_gpukernels_op_through_dispatch(monkeypatch):
    """Count what the dispatch layer ran during one training step, and which aten ops remain
    outside our operators (the ones the model still takes from torch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gpukernels.torch.nn.utils import clip_grad_norm_
    from gpukernels.torch.optim import AdamW

    calls = []
    real = _dispatch.implementation

    def recording(family, op, backend):
        calls.append((family, op, backend))
        return real(family, op, backend)

    class AtenOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(f"{func.namespace}::{func.overloadpacket.__name__}")
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(_dispatch, "implementation", recording)
    model = _model("lstm", "additive", dtype=torch.float32)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    src, lengths, tgt = _copy_batch(torch.Generator().manual_seed(0), batch=3)
    with AtenOps() as aten:
        _train_step(model, optimizer, clip_grad_norm_, src, lengths, tgt)
    families = {(family, op) for family, op, _ in calls}
    assert {backend for _, _, backend in calls} == {"numpy"}  # CPU tensors: the reference, no fallback warning
    # The encoder layers and decoder cells (rnn layer ops), attention, tanh (activation), the
    # dense layers, the loss, the clipping and AdamW: forward and backward of each.
    assert families == {("rnn", "layer_forward"), ("rnn", "layer_backward"), ("attention", "attention_forward"),
                        ("attention", "attention_backward"), ("activation", "forward"), ("activation", "backward"),
                        ("linear", "forward"), ("linear", "backward"), ("cross_entropy", "cross_entropy_rows"),
                        ("optim", "clip_grad_norm_"), ("optim", "adam_step")}, families
    ours = {name.split("::")[1] for name in aten.names if name.startswith("gpukernels::")}
    assert ours == {"recurrent_layer", "recurrent_layer_backward", "attention", "attention_backward", "tanh",
                    "tanh_backward", "linear", "linear_backward", "cross_entropy"}, ours
    # torch's own recurrences, attention softmax, tanh, dense layers, loss and optimizer math
    # never ran: what remains on torch is the embedding and glue (cat, indexing, pack/pad).
    torch_ops = {name.split("::")[1] for name in aten.names if name.startswith("aten::")}
    ours_only = {"lstm", "gru", "lstm_cell", "gru_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "tanh",
                 "tanh_backward", "_softmax", "_log_softmax", "nll_loss_forward", "nll_loss_backward", "bmm",
                 "addmm", "mm", "linear", "_foreach_mul_", "_fused_adamw_", "addcdiv_", "lerp_"}
    assert not torch_ops & ours_only, torch_ops & ours_only
    assert "embedding" in torch_ops


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("arguments,error,name", [
    ({"hidden_size": 7}, ValueError, "hidden_size"),
    ({"cell": "rnn"}, ValueError, "cell"),
    ({"attention": "cosine"}, ValueError, "attention"),
    ({"modules": "jax"}, ValueError, "modules"),
    ({"embedding_dim": 2.5}, TypeError, "embedding_dim"),
    ({"eos_index": 99}, ValueError, "eos_index"),
    ({"bos_index": 0}, ValueError, "bos_index"),
], ids=["odd-hidden", "cell", "attention", "modules", "float-embedding", "eos-outside", "bos-is-pad"])
def test_bad_constructor_arguments(arguments, error, name):
    with pytest.raises(error, match=name):
        Seq2Seq(SRC_VOCAB, TGT_VOCAB, **arguments)


def test_bad_call_arguments():
    model = _model()
    src, lengths, tgt = _batch()
    with pytest.raises(TypeError, match="src"):
        model(src.float(), lengths, tgt)
    with pytest.raises(ValueError, match="src_lengths"):
        model(src, torch.tensor([7, 3, 5, 0]), tgt)
    with pytest.raises(ValueError, match="src_lengths"):
        model(src, torch.tensor([8, 3, 5, 1]), tgt)
    with pytest.raises(ValueError, match="src"):
        model(src + SRC_VOCAB, lengths, tgt)
    with pytest.raises(ValueError, match="tgt"):
        model(src, lengths, tgt[:2])
    with pytest.raises(TypeError, match="tgt"):
        model(src, lengths, tgt.int())
    with pytest.raises(ValueError, match="teacher_forcing_ratio"):
        model(src, lengths, tgt, teacher_forcing_ratio=1.5)
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, lengths, beam_size=0)
    with pytest.raises(TypeError, match="max_length"):
        model.greedy(src, lengths, max_length=2.0)
    with pytest.raises(ValueError, match="length_penalty"):
        model.beam_search(src, lengths, length_penalty=-1.0)
