"""``gpukernels demo seq2seq``: the data, the --quick run end to end (accuracy, metrics.json,
PNGs, checkpoint, translate), --compare-torch, bad options."""

from __future__ import annotations

import datetime
import importlib.util
import json

import pytest
import torch

from gpukernels.tools import cli, demo_seq2seq


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    yield
    demo_seq2seq.limit_threads(threads)  # the demo sets one thread on the CPU; give the rest back


def test_data_is_deterministic_disjoint_and_correct():
    train, held_out = demo_seq2seq.make_splits(500, 100, seed=3)
    assert (train, held_out) == demo_seq2seq.make_splits(500, 100, seed=3)
    assert len(train) == 500 and len(held_out) == 100
    assert not {s for s, _ in train} & {s for s, _ in held_out}
    for source, iso in train[:50] + held_out[:50]:
        day = datetime.date.fromisoformat(iso)
        assert any(f(day) == source for f in demo_seq2seq.FORMATS)
    vocabulary = demo_seq2seq.Vocabulary(demo_seq2seq.SOURCE_CHARACTERS)
    assert all(vocabulary.decode(vocabulary.encode(s) + [2]) == s for s, _ in train)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocabulary.encode("3rd of März 1998")


def test_quick_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["demo", "seq2seq", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for field in ("sequence_accuracy", "token_accuracy", "steps", "seconds", "backend"):
        assert field in metrics, field
    assert metrics["backend"] == "numpy" and metrics["quick"] is True
    assert metrics["sequence_accuracy"] >= demo_seq2seq.QUICK_SEQUENCE_ACCURACY
    assert metrics["token_accuracy"] >= metrics["sequence_accuracy"]
    assert metrics["steps"] == demo_seq2seq.QUICK["epochs"] * -(-demo_seq2seq.QUICK["train_size"] // 64)
    if importlib.util.find_spec("matplotlib"):
        for picture in ("curves.png", "attention.png"):
            assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "held-out sequence accuracy" in capsys.readouterr().out
    texts = ["3rd of March 1998", "December 31, 2049"]
    translated = demo_seq2seq.translate(str(out / "seq2seq.pt"), texts)
    assert len(translated) == 2 and all(len(iso) == 10 and iso[4] == iso[7] == "-" for iso in translated)
    assert cli.main(["demo", "translate", str(out / "seq2seq.pt"), "3rd of March 1998", "--beam-size", "3"]) == 0
    assert f"'3rd of March 1998' -> {translated[0]}" in capsys.readouterr().out


def test_compare_torch_same_weights_same_batches(tmp_path):
    out = tmp_path / "compare"
    assert cli.main(["demo", "seq2seq", "--quick", "--epochs", "1", "--train-size", "192", "--test-size", "20",
                     "--cell", "gru", "--attention", "general", "--compare-torch", "--no-plots",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ours, twin = metrics["curves"], metrics["torch"]["curves"]
    assert metrics["config"]["cell"] == "gru" and metrics["config"]["attention"] == "general"
    assert len(ours["loss"]) == len(twin["loss"]) == 3 and metrics["torch"]["seconds_per_step"] > 0
    # Same initial weights and the same first batch: the same first loss (float32, two libraries).
    assert ours["loss"][0] == pytest.approx(twin["loss"][0], rel=1e-5)
    assert ours["loss"] == pytest.approx(twin["loss"], rel=1e-2)


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--batch-size", "0"], ["--threads", "0"]],
                         ids=["epochs", "batch-size", "threads"])
def test_bad_options(option):
    with pytest.raises(SystemExit, match=option[0]):
        cli.main(["demo", "seq2seq", "--quick", "--no-plots", *option])


@pytest.mark.parametrize("demo", ["seq2seq", "translate"])
def test_help(demo, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["demo", demo, "--help"])
    assert exit.value.code == 0 and "--" in capsys.readouterr().out
