"""An attention sequence-to-sequence model built from our ops (the chapter's model, end to end).

Encoder: an embedding and a multi-layer (by default bidirectional) LSTM or GRU, run on the
source packed by its lengths. Bridge: the last layer's final states of both directions,
concatenated, through a learned ``tanh(W [h_fwd; h_bwd] + b)`` into the decoder's initial state
(and the same, with its own weights, for an LSTM's cell state). Decoder: an LSTMCell / GRUCell
step per target token whose input is the previous token's embedding and the previous attentional
state (Luong's input feeding); attention over the encoder outputs with the decoder state as the
query and the source padding masked; the attentional state ``tanh(W_c [context; h])``; an output
projection to the vocabulary.

``modules="gpukernels"`` (the default) runs the recurrences, attention, tanh and log-softmax on
our operators; ``modules="torch"`` builds the same architecture, with the same parameter names
and shapes, from ``torch.nn`` and eager torch ops: the twin that tests and the demo compare with
(``twin.load_state_dict(model.state_dict())``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import functional as gkF
from .. import nn as gknn

CELLS = ("lstm", "gru")
ATTENTIONS = ("additive", "general", "dot")
MODULES = ("gpukernels", "torch")


# ---------------------------------------------------------------------------------------------
# The dense layers and the loss: ours (gpukernels.torch.nn.Linear, our cross-entropy); the
# torch.nn twin keeps torch's (_TORCH_LINEAR, _torch_loss).


_TORCH_LINEAR = torch.nn.Linear


def _torch_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, label_smoothing: float) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index,
                                             label_smoothing=label_smoothing)


def _linear(in_features: int, out_features: int, bias: bool = True) -> torch.nn.Module:
    """The dense layers of our model (bridge, attentional state, output projection): ours, with
    torch.nn.Linear's parameters, so the twin's state_dict loads unchanged."""
    return gknn.Linear(in_features, out_features, bias=bias)


def _loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, label_smoothing: float) -> torch.Tensor:
    """Our model's mean token cross-entropy over the non-padding target positions."""
    return gkF.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------
# The torch.nn twin's attention: eager ops, the same parameter names as ours.


class _EagerAdditiveAttention(torch.nn.Module):
    def __init__(self, query_size: int, key_size: int, attention_size: int):
        super().__init__()
        self.query_proj = torch.nn.Linear(query_size, attention_size, bias=False)
        self.key_proj = torch.nn.Linear(key_size, attention_size, bias=False)
        self.v = torch.nn.Parameter(torch.empty(attention_size))

    def forward(self, query, keys, values, mask):
        hidden = torch.tanh(self.query_proj(query)[:, None, :] + self.key_proj(keys))
        return _eager_weighting(hidden @ self.v, values, mask)


class _EagerDotAttention(torch.nn.Module):
    def __init__(self, query_size: int, key_size: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.weight = torch.nn.Parameter(torch.empty(query_size, key_size))
        else:
            self.register_parameter("weight", None)

    def forward(self, query, keys, values, mask):
        if self.weight is not None:
            query = query @ self.weight
        return _eager_weighting(torch.bmm(keys, query[:, :, None])[:, :, 0], values, mask)


def _eager_weighting(scores, values, mask):
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.bmm(weights[:, None, :], values)[:, 0], weights


# ---------------------------------------------------------------------------------------------


class Hypotheses(NamedTuple):
    """Decoded sequences: ``tokens`` (B, T) int64 padded with ``pad_index`` after EOS (EOS
    included), ``lengths`` (B,) counting EOS, ``scores`` (B,) the summed log-probabilities
    (beam search: divided by ``length ** length_penalty``), ``attention`` (B, T, S) the
    attention weights of each emitted token."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    attention: torch.Tensor


def _check_int(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def teacher_forcing_ratio(step: int, total_steps: int, start: float = 1.0, end: float = 0.5) -> float:
    """Scheduled sampling's ratio at training ``step`` of ``total_steps``: linear from ``start``
    to ``end`` (clamped at ``end`` past the last step)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"start and end must lie in [0, 1], got {start} and {end}")
    progress = min(max(step, 0) / total_steps, 1.0)
    return start + (end - start) * progress


class Seq2Seq(torch.nn.Module):
    """Encoder-decoder with attention.

    Arguments: ``src_vocab_size``, ``tgt_vocab_size``; ``embedding_dim``; ``hidden_size``, the
    decoder state's size and the encoder output's size (each encoder direction has
    ``hidden_size // 2`` when bidirectional, so it must be even); ``num_layers`` of the encoder;
    ``cell`` "lstm" or "gru"; ``attention`` "additive" (Bahdanau), "general" or "dot" (Luong);
    ``bidirectional``; ``pad_index``, ``bos_index``, ``eos_index`` shared by both vocabularies;
    ``modules`` "gpukernels" or "torch" (the eager twin).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embedding_dim: int = 32, hidden_size: int = 64,
                 num_layers: int = 1, cell: str = "lstm", attention: str = "additive", bidirectional: bool = True,
                 pad_index: int = 0, bos_index: int = 1, eos_index: int = 2, *, modules: str = "gpukernels"):
        super().__init__()
        for name, value, least in (("src_vocab_size", src_vocab_size, 1), ("tgt_vocab_size", tgt_vocab_size, 3),
                                   ("embedding_dim", embedding_dim, 1), ("hidden_size", hidden_size, 1),
                                   ("num_layers", num_layers, 1), ("pad_index", pad_index, 0),
                                   ("bos_index", bos_index, 0), ("eos_index", eos_index, 0)):
            _check_int(name, value, least)
        _check_choice("cell", cell, CELLS)
        _check_choice("attention", attention, ATTENTIONS)
        _check_choice("modules", modules, MODULES)
        if bidirectional and hidden_size % 2:
            raise ValueError(f"hidden_size must be even with bidirectional=True (hidden_size // 2 per direction), "
                             f"got {hidden_size}")
        for name, index in (("pad_index", pad_index), ("bos_index", bos_index), ("eos_index", eos_index)):
            if index >= tgt_vocab_size:
                raise ValueError(f"{name}={index} is outside the target vocabulary of {tgt_vocab_size}")
        if len({pad_index, bos_index, eos_index}) != 3:
            raise ValueError(f"pad_index, bos_index and eos_index must differ, got {pad_index}, {bos_index}, "
                             f"{eos_index}")
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.embedding_dim, self.hidden_size, self.num_layers = embedding_dim, hidden_size, num_layers
        self.cell, self.attention_kind, self.bidirectional = cell, attention, bidirectional
        self.pad_index, self.bos_index, self.eos_index = pad_index, bos_index, eos_index
        self.modules_kind = modules
        ours = modules == "gpukernels"
        library = gknn if ours else torch.nn
        linear = _linear if ours else _TORCH_LINEAR
        directions = 2 if bidirectional else 1
        encoder_hidden = hidden_size // directions

        self.src_embedding = torch.nn.Embedding(src_vocab_size, embedding_dim, padding_idx=pad_index)
        self.tgt_embedding = torch.nn.Embedding(tgt_vocab_size, embedding_dim, padding_idx=pad_index)
        rnn = library.LSTM if cell == "lstm" else library.GRU
        self.encoder = rnn(embedding_dim, encoder_hidden, num_layers=num_layers, batch_first=True,
                           bidirectional=bidirectional)
        self.bridge_h = linear(hidden_size, hidden_size)
        self.bridge_c = linear(hidden_size, hidden_size) if cell == "lstm" else None
        decoder_cell = library.LSTMCell if cell == "lstm" else library.GRUCell
        self.decoder = decoder_cell(embedding_dim + hidden_size, hidden_size)
        if attention == "additive":
            self.attention = (gknn.AdditiveAttention(hidden_size, hidden_size, hidden_size) if ours
                              else _EagerAdditiveAttention(hidden_size, hidden_size, hidden_size))
        else:
            self.attention = (gknn.DotAttention(hidden_size, hidden_size, kind=attention) if ours
                              else _EagerDotAttention(hidden_size, hidden_size, attention))
        self.combine = linear(2 * hidden_size, hidden_size, bias=False)
        self.output = linear(hidden_size, tgt_vocab_size)
        self._tanh = gkF.tanh if ours else torch.tanh
        self._log_softmax = gkF.log_softmax if ours else torch.log_softmax
        self._loss = _loss if ours else _torch_loss
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(fan) everywhere (torch.nn's RNN rule), the same for both twins."""
        for parameter in self.parameters():
            fan = parameter.shape[-1] if parameter.dim() > 1 else self.hidden_size
            bound = 1.0 / math.sqrt(fan)
            torch.nn.init.uniform_(parameter, -bound, bound)
        with torch.no_grad():
            self.src_embedding.weight[self.pad_index].zero_()
            self.tgt_embedding.weight[self.pad_index].zero_()

    def extra_repr(self) -> str:
        return (f"cell={self.cell!r}, attention={self.attention_kind!r}, bidirectional={self.bidirectional}, "
                f"modules={self.modules_kind!r}")

    # -----------------------------------------------------------------------------------------
    # Checks

    def _check_source(self, src, src_lengths) -> None:
        if not isinstance(src, torch.Tensor) or src.dtype != torch.int64:
            raise TypeError(f"src must be an int64 torch.Tensor of token ids, got "
                            f"{getattr(src, 'dtype', type(src).__name__)}")
        if src.dim() != 2 or src.shape[0] == 0 or src.shape[1] == 0:
            raise ValueError(f"src must have shape (batch, src_len) with both at least 1, got {tuple(src.shape)}")
        if not isinstance(src_lengths, torch.Tensor) or src_lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError("src_lengths must be an integer torch.Tensor")
        if tuple(src_lengths.shape) != (src.shape[0],):
            raise ValueError(f"src_lengths must have shape ({src.shape[0]},), got {tuple(src_lengths.shape)}")
        lengths = src_lengths.cpu()
        if bool((lengths < 1).any()) or bool((lengths > src.shape[1]).any()):
            raise ValueError(f"src_lengths must lie in [1, {src.shape[1]}], got {lengths.tolist()}")
        if bool(((src < 0) | (src >= self.src_vocab_size)).any()):
            raise ValueError(f"src holds token ids outside [0, {self.src_vocab_size})")

    def _check_target(self, tgt, batch: int) -> None:
        if not isinstance(tgt, torch.Tensor) or tgt.dtype != torch.int64:
            raise TypeError(f"tgt must be an int64 torch.Tensor of token ids, got "
                            f"{getattr(tgt, 'dtype', type(tgt).__name__)}")
        if tgt.dim() != 2 or tgt.shape[0] != batch or tgt.shape[1] == 0:
            raise ValueError(f"tgt must have shape ({batch}, tgt_len) with tgt_len at least 1, got {tuple(tgt.shape)}")
        if bool(((tgt < 0) | (tgt >= self.tgt_vocab_size)).any()):
            raise ValueError(f"tgt holds token ids outside [0, {self.tgt_vocab_size})")

    # -----------------------------------------------------------------------------------------
    # Pieces

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """Encoder outputs (B, S, hidden_size), the source mask (B, S) (True on real tokens)
        and the decoder's initial state (``(h, c)`` for an LSTM, ``h`` for a GRU)."""
        self._check_source(src, src_lengths)
        lengths = src_lengths.cpu()
        packed = pack_padded_sequence(self.src_embedding(src), lengths, batch_first=True, enforce_sorted=False)
        packed_out, final = self.encoder(packed)
        # Padded back to the batch's full source width: zeros past each length (masked anyway).
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.shape[1])
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths.to(src.device)[:, None]
        h_n = final[0] if self.cell == "lstm" else final
        state_h = self._tanh(self.bridge_h(self._last_layer(h_n)))
        if self.cell == "lstm":
            return outputs, mask, (state_h, self._tanh(self.bridge_c(self._last_layer(final[1]))))
        return outputs, mask, state_h

    def _last_layer(self, states: torch.Tensor) -> torch.Tensor:
        """The last encoder layer's final state(s), both directions side by side: (B, hidden_size)."""
        if self.bidirectional:
            return torch.cat((states[-2], states[-1]), dim=-1)
        return states[-1]

    def decode_step(self, token: torch.Tensor, feed: torch.Tensor, state, outputs: torch.Tensor, mask: torch.Tensor):
        """One decoder step: previous ``token`` (B,) and attentional ``feed`` (B, hidden_size)
        -> logits (B, V), the new attentional state, the new cell state, the attention (B, S)."""
        x = torch.cat((self.tgt_embedding(token), feed), dim=-1)
        state = self.decoder(x, state)
        h = state[0] if self.cell == "lstm" else state
        context, weights = self.attention(h, outputs, outputs, mask)
        attentional = self._tanh(self.combine(torch.cat((context, h), dim=-1)))
        return self.output(attentional), attentional, state, weights

    # -----------------------------------------------------------------------------------------
    # Training

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt: torch.Tensor,
                teacher_forcing_ratio: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits (B, T, V) for predicting ``tgt`` (B, T) (without BOS; EOS and padding
        included) given ``src``. Step t's input is the gold token ``tgt[:, t-1]`` with
        probability ``teacher_forcing_ratio`` (drawn per sequence and step from ``generator``),
        else the model's own previous prediction."""
        if isinstance(teacher_forcing_ratio, bool) or not isinstance(teacher_forcing_ratio, (int, float)) \
                or not 0.0 <= teacher_forcing_ratio <= 1.0:
            raise ValueError(f"teacher_forcing_ratio must be a number in [0, 1], got {teacher_forcing_ratio!r}")
        self._check_source(src, src_lengths)  # both checked before anything runs
        self._check_target(tgt, src.shape[0])
        outputs, mask, state = self.encode(src, src_lengths)
        batch = src.shape[0]
        token = torch.full((batch,), self.bos_index, dtype=torch.int64, device=src.device)
        feed = outputs.new_zeros(batch, self.hidden_size)
        logits = []
        for t in range(tgt.shape[1]):
            step_logits, feed, state, _ = self.decode_step(token, feed, state, outputs, mask)
            logits.append(step_logits)
            token = tgt[:, t]
            if teacher_forcing_ratio < 1.0 and t + 1 < tgt.shape[1]:
                own = step_logits.detach().argmax(-1)
                gold = torch.rand(batch, generator=generator, device="cpu").to(src.device) < teacher_forcing_ratio
                token = torch.where(gold, token, own)
        return torch.stack(logits, dim=1)

    def loss(self, logits: torch.Tensor, tgt: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy over the target tokens that are not padding."""
        return self._loss(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), self.pad_index, label_smoothing)

    # -----------------------------------------------------------------------------------------
    # Inference

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, src_lengths: torch.Tensor, max_length: int = 50) -> Hypotheses:
        """The most probable token at each step, until EOS (per sequence) or ``max_length``;
        ``scores`` are the summed log-probabilities of the emitted tokens."""
        _check_int("max_length", max_length, 1)
        outputs, mask, state = self.encode(src, src_lengths)
        batch = src.shape[0]
        token = torch.full((batch,), self.bos_index, dtype=torch.int64, device=src.device)
        feed = outputs.new_zeros(batch, self.hidden_size)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        scores = torch.zeros(batch, dtype=torch.float64, device=src.device)
        lengths = torch.zeros(batch, dtype=torch.int64, device=src.device)
        tokens, attention = [], []
        for _ in range(max_length):
            logits, feed, state, weights = self.decode_step(token, feed, state, outputs, mask)
            log_probs = self._log_softmax(logits, dim=-1).to(torch.float64)
            best, token = log_probs.max(-1)
            token = token.masked_fill(finished, self.pad_index)
            scores += best.masked_fill(finished, 0.0)
            tokens.append(token)
            attention.append(weights)
            lengths += (~finished).long()
            finished = finished | (token == self.eos_index)
            if bool(finished.all()):
                break
        return Hypotheses(torch.stack(tokens, dim=1), lengths, scores, torch.stack(attention, dim=1))

    @torch.no_grad()
    def beam_search(self, src: torch.Tensor, src_lengths: torch.Tensor, beam_size: int = 4, max_length: int = 50,
                    length_penalty: float = 1.0) -> Hypotheses:
        """Batched beam search: ``beam_size`` hypotheses per sequence, all sequences advanced
        together; a hypothesis that emits EOS is finished (it keeps its score and extends only
        with padding, at no cost) and a sequence stops when all its hypotheses are. The best
        hypothesis by ``score / length ** length_penalty`` is returned."""
        _check_int("beam_size", beam_size, 1)
        _check_int("max_length", max_length, 1)
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or length_penalty < 0:
            raise ValueError(f"length_penalty must be a non-negative number, got {length_penalty!r}")
        outputs, mask, state = self.encode(src, src_lengths)
        batch, source_len, k, device = src.shape[0], src.shape[1], beam_size, src.device
        # Every row of the batch repeated k times: rows b*k .. b*k+k-1 are sequence b's beams.
        outputs, mask = outputs.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        repeat = lambda s: s.repeat_interleave(k, 0)  # noqa: E731
        state = tuple(map(repeat, state)) if self.cell == "lstm" else repeat(state)
        token = torch.full((batch * k,), self.bos_index, dtype=torch.int64, device=device)
        feed = outputs.new_zeros(batch * k, self.hidden_size)
        # Only the first beam is live at the start, so the k beams do not all pick the same token.
        scores = torch.full((batch, k), float("-inf"), device=device, dtype=torch.float64)
        scores[:, 0] = 0.0
        finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch, k, dtype=torch.int64, device=device)
        tokens = torch.empty(batch, k, 0, dtype=torch.int64, device=device)
        attention = outputs.new_empty(batch, k, 0, source_len)
        rows = torch.arange(batch, device=device)[:, None]
        for _ in range(max_length):
            logits, feed, state, weights = self.decode_step(token, feed, state, outputs, mask)
            log_probs = self._log_softmax(logits, dim=-1).to(torch.float64).view(batch, k, -1)
            vocab = log_probs.shape[-1]
            # A finished beam continues with padding only, at zero cost.
            stay = torch.full_like(log_probs[0, 0], float("-inf"))
            stay[self.pad_index] = 0.0
            log_probs = torch.where(finished[..., None], stay, log_probs)
            candidates = (scores[..., None] + log_probs).view(batch, k * vocab)
            scores, flat = candidates.topk(k, dim=-1)
            origin, token = flat // vocab, flat % vocab
            finished = finished[rows, origin]
            lengths = lengths[rows, origin] + (~finished).long()
            finished = finished | (token == self.eos_index)
            tokens = torch.cat((tokens[rows, origin], token[..., None]), dim=-1)
            attention = torch.cat((attention[rows, origin], weights.view(batch, k, 1, source_len)[rows, origin]), dim=2)
            beams = (rows * k + origin).view(-1)
            feed = feed[beams]
            state = tuple(s[beams] for s in state) if self.cell == "lstm" else state[beams]
            token = token.view(-1)
            if bool(finished.all()):
                break
        normalised = scores / lengths.clamp(min=1).to(scores.dtype) ** length_penalty
        best = normalised.argmax(-1)
        pick = torch.arange(batch, device=device)
        return Hypotheses(tokens[pick, best], lengths[pick, best], normalised[pick, best], attention[pick, best])


__all__ = ["Seq2Seq", "Hypotheses", "teacher_forcing_ratio", "CELLS", "ATTENTIONS", "MODULES"]
