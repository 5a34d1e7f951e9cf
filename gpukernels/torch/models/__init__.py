"""Ready models built from our ops."""

from .seq2seq import Hypotheses, Seq2Seq, teacher_forcing_ratio

__all__ = ["Seq2Seq", "Hypotheses", "teacher_forcing_ratio"]
