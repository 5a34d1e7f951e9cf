"""The normalisation benchmarks' bytes model: what each op must move, and how much less the fused
residual variants move than an add followed by the norm."""

from __future__ import annotations

import pytest

from gpukernels.benchmarks.normalization import bytes_model, fused_saving


def test_the_model_counts_each_tensor_once():
    rows, cols = 8192, 4096
    full = rows * cols * 2  # one bf16 tensor
    assert bytes_model("layer_norm", "fwd", rows, cols, "bfloat16") == 2 * full + 2 * cols * 2 + 2 * rows * 4
    assert bytes_model("rms_norm", "fwd", rows, cols, "bfloat16") == 2 * full + cols * 2 + rows * 4
    # backward: dy, x -> dx; weight read, dw (and db) written; the statistics read
    assert bytes_model("layer_norm", "bwd", rows, cols, "bfloat16") == 3 * full + 3 * cols * 2 + 2 * rows * 4
    assert bytes_model("add_rms_norm", "bwd", rows, cols, "float32") == 4 * rows * cols * 4 + 2 * cols * 4 + rows * 4


@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_the_fused_residual_variants_move_a_fifth_less_forward_and_a_third_less_backward(op):
    assert fused_saving(op, "fwd", 8192, 4096, "bfloat16") == pytest.approx(0.2, abs=1e-3)  # 4 tensors, not 5
    assert fused_saving(op, "bwd", 8192, 4096, "bfloat16") == pytest.approx(1 / 3, abs=1e-3)  # 4, not 6


def test_unknown_ops_and_modes_are_refused():
    with pytest.raises(ValueError, match="op in"):
        bytes_model("batch_norm", "fwd", 2, 2, "float32")
    with pytest.raises(ValueError, match="mode in"):
        bytes_model("layer_norm", "full", 2, 2, "float32")
