"""`gpukernels bench`: every registered CPU case runs; a tiny case set goes through the whole
command on the device each test names with --device (CSV/JSON columns, PNG plots, --compare
ratios, progress bar; the CPU wording with --device cpu, on a GPU machine too); bad filters,
devices and paths fail with errors that name the problem, before anything is timed or written."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from gpukernels.tools import bench, cli
from gpukernels.benchmarks import harness, peers, registry
from gpukernels.benchmarks import run as bench_run
from gpukernels.benchmarks.registry import BenchCase

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CPU_CASES = [c for c in registry.all_cases() if "cpu" in c.devices]


@pytest.mark.parametrize("case", CPU_CASES, ids=[f"{c.family}-{c.name}" for c in CPU_CASES])
def test_every_registered_cpu_case_runs(case):
    results = harness.run_cases([case], "cpu", min_seconds=0.0, min_runs=1)
    assert {m.provider for m in results} == {p for p in case.providers if case.runs_on(p, "cpu")}
    for m in results:
        assert m.timing is not None, f"{m.provider}: {m.error}"
        assert m.timing.median_ms > 0


def test_every_registered_case_has_ours_and_a_baseline():
    from gpukernels.tools.report import memory_bound

    for case in registry.all_cases():
        assert any(registry.is_ours(p) for p in case.providers), case.name
        assert any(not registry.is_ours(p) for p in case.providers), case.name
        if memory_bound(case):  # `gpukernels report` profiles the eager provider of these
            assert case.eager in case.providers, case.name


def test_rnn_layers_name_the_baseline_by_what_runs_it():
    layer = [c for c in registry.all_cases() if c.op == "lstm_layer" and c.mode == "full"]

    def providers(case, device):
        return {p for p in case.providers if case.runs_on(p, device)}

    fp32 = next(c for c in layer if c.dtype == "float32" and "cuda" in c.devices)
    fp16 = next(c for c in layer if c.dtype == "float16")
    on_cpu = next(c for c in layer if "cpu" in c.devices)
    assert providers(fp32, "cuda") == {"gpukernels", "gpukernels-persistent", "gpukernels-graph", "gpukernels-tf32",
                                       "torch-cudnn", "torch-cudnn-tf32", "torch", "torch.compile"}
    assert providers(fp16, "cuda") == {"gpukernels", "gpukernels-persistent", "gpukernels-graph", "torch-cudnn", "torch",
                                       "torch.compile"}
    assert providers(on_cpu, "cpu") == {"gpukernels", "torch.nn", "torch"}


# ---------------------------------------------------------------------------------------------
# Issue 14's cases: registered for the GPU (exercised by the GPU proof), checked here in the registry


def _providers_on(case, device):
    return {p for p in case.providers if case.runs_on(p, device)}


def test_issue14_rnn_grid_is_registered_for_the_gpu_with_every_provider():
    from gpukernels.benchmarks import rnn

    cases = {(c.op, c.mode, c.dtype, c.size): c for c in registry.all_cases() if c.family == "rnn"}
    grid = [(f"{cell}_layer", mode, dtype, f"B={B},H={H},T={T}")
            for cell in ("lstm", "gru") for mode in ("fwd", "full") for dtype in ("float16", "bfloat16")
            for B in (8, 32, 128) for H in (256, 512, 1024) for T in (100, 1000)]
    assert len(grid) == 144 and all(key in cases for key in grid)
    for key in grid:
        case = cases[key]
        assert case.devices == ("cuda",) and not case.in_default_set, key
        assert case.params["T"] == int(key[3].rsplit("=", 1)[1])
        expected = {"gpukernels", "gpukernels-persistent", "gpukernels-graph", "torch-cudnn", "torch"}
        if case.params["T"] <= rnn.COMPILE_MAX_STEPS:
            expected.add("torch.compile")  # unrolling 1000 steps would compile for minutes
        if case.op == "lstm_layer" and peers.importable("flashrnn"):
            expected.add("flashrnn")
        assert _providers_on(case, "cuda") == expected, key
    long, short = cases[("lstm_layer", "full", "float16", "B=8,H=256,T=1000")], cases[
        ("lstm_layer", "full", "float16", "B=8,H=256,T=100")]
    assert long.bytes_moved > 9 * short.bytes_moved and long.flops == 10 * short.flops


def test_issue14_rnn_grid_builds_inputs_of_its_length_on_the_cpu():
    from gpukernels.benchmarks import rnn

    inputs = rnn._setup("gru", "layer", 2, 8, "float32", steps=7)("cpu")
    assert tuple(inputs["x"].shape) == (7, 2, rnn.INPUT_SIZE)


@pytest.mark.parametrize("present", [True, False], ids=["present", "absent"])
def test_flashrnn_joins_the_lstm_layers_only_when_it_imports(monkeypatch, present):
    monkeypatch.setattr(peers, "importable", lambda module: present and module == "flashrnn")
    cases = [c for c in peers.with_peers(registry.all_cases()) if c.family == "rnn"]
    lstm = [c for c in cases if c.op == "lstm_layer" and "B=32,H=512,T=1000" in c.size]
    assert lstm and all(("flashrnn" in c.providers) == present for c in lstm)
    assert not any(c.runs_on("flashrnn", "cpu") for c in lstm)  # a GPU-only peer
    assert not any("flashrnn" in c.providers for c in cases if c.op != "lstm_layer")


def test_the_gpu_proof_runs_issue14s_rnn_corner():
    from gpukernels.tools import gpu_proof

    chosen = {(c.op, c.mode, c.dtype, c.size) for c in gpu_proof.select_bench_cases("cuda", family="rnn")}
    corner = {(op, mode, "float16", "B=32,H=512,T=100") for op in ("lstm_layer", "gru_layer") for mode in ("fwd", "full")}
    assert corner <= chosen
    assert not any(size.endswith("T=1000") for *_, size in chosen)  # the long sequences stay out of its 100 s


@pytest.mark.parametrize("present", [True, False], ids=["present", "absent"])
def test_flash_attn_provider_only_when_its_package_imports(monkeypatch, present):
    from gpukernels.benchmarks import attention

    monkeypatch.setattr(attention, "importable", lambda module: present and module == "flash_attn")
    for N in (1024, 16384):
        providers = attention._sdpa_gpu_providers(N, "full", True)
        assert ("flash_attn" in providers) == present
        assert {"gpukernels", "torch-flash"} <= set(providers) and ("torch-math" in providers) == (N <= 4096)


def test_the_registered_sdpa_cases_offer_flash_attn_as_this_environment_allows():
    sdpa = [c for c in registry.all_cases() if c.op == "scaled_dot_product_attention"]
    on_gpu = [c for c in sdpa if "cuda" in c.devices]
    assert on_gpu and all(("flash_attn" in c.providers) == peers.importable("flash_attn") for c in on_gpu)
    assert not any("flash_attn" in c.providers for c in sdpa if "cpu" in c.devices)


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
def test_flash_attn_provider_gets_sequence_major_inputs_and_gives_the_same_gradients(monkeypatch, mode):
    # flash_attn itself needs a GPU; a stand-in with its signature and (B, N, H, d) layout checks
    # the layout change made outside the timing, and that the gradients are those of the same inputs.
    import sys
    import types

    import torch
    import torch.nn.functional as F

    from gpukernels.benchmarks import attention

    B, H, N, d = 2, 3, 5, 4
    seen = []

    def flash_attn_func(q, k, v, causal=False):
        seen.append((tuple(q.shape), q.is_contiguous(), causal))
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=causal).transpose(1, 2)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    monkeypatch.setattr(attention, "importable", lambda module: module == "flash_attn")
    inputs = attention._sdpa_setup(B, H, N, d, "float32", mode)("cpu")
    providers = attention._sdpa_gpu_providers(N, mode, True)
    result = providers["flash_attn"](inputs)()
    expected = providers["torch-math"](inputs)()
    assert seen and all(s == ((B, N, H, d), True, True) for s in seen)
    if mode == "fwd":
        torch.testing.assert_close(result.transpose(1, 2), expected)
    else:
        for ours, theirs in zip(result, expected):
            torch.testing.assert_close(ours.transpose(1, 2), theirs)


def test_the_gpu_default_set_holds_issue14s_sdpa_target():
    chosen = bench.select_cases(registry.all_cases(), "cuda", op="scaled_dot_product_attention")
    target = {(mode, "bfloat16", size) for mode in ("fwd", "full")
              for size in ("B=4,H=16,N=4096,d=128", "B=4,H=16,N=4096,d=128,causal")}
    assert {(c.mode, c.dtype, c.size) for c in chosen if c.mode != "bwd"} == target
    from gpukernels.tools import gpu_proof

    proof = {(c.mode, c.dtype, c.size) for c in gpu_proof.select_bench_cases("cuda", family="attention")}
    assert target <= proof


def _cudnn_state():
    import torch

    cudnn = torch.backends.cudnn
    return cudnn.enabled, cudnn.allow_tf32, getattr(cudnn.rnn, "fp32_precision", None)


@pytest.mark.parametrize("provider, tf32", [("torch-cudnn", False), ("torch-cudnn-tf32", True)])
def test_rnn_cudnn_baselines_switch_cudnn_on_with_the_stated_math(provider, tf32):
    # cuDNN itself needs a GPU (tests/test_gpu_rnn.py sees aten::_cudnn_rnn run); here a stand-in
    # for torch.nn.LSTM records the flags its forward and its backward (the timed part) run under.
    import torch

    case = next(c for c in registry.all_cases() if c.op == "gru_layer" and c.mode == "bwd" and c.dtype == "float32"
                and "cuda" in c.devices)
    seen = []
    x = torch.randn(3, requires_grad=True)
    x.register_hook(lambda grad: seen.append(("backward", *_cudnn_state())))

    class StandIn(torch.nn.Module):
        def forward(self, inputs):
            seen.append(("forward", *_cudnn_state()))
            return (inputs * 2.0,)

    has_rnn_setting = _cudnn_state()[2] is not None
    expected = (True, tf32, ("tf32" if tf32 else "ieee") if has_rnn_setting else None)
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=not tf32):  # a process that set the opposite
        timed = case.providers[provider]({"theirs": StandIn(), "x": x})
        timed()
        assert _cudnn_state()[:2] == (False, not tf32)  # restored after every call
    assert [s[0] for s in seen] == ["forward", "backward"]
    assert all(s[1:] == expected for s in seen), seen


# ---------------------------------------------------------------------------------------------
# A tiny case set through the whole command


def _tiny_setup(n):
    def make(device):
        import torch

        return torch.linspace(-2.0, 2.0, n, device=device)

    return make


def _host(x):
    """The numpy view a NumPy provider works on, wherever the case's tensors were built."""
    return x.cpu().numpy()


def _bench(*argv, device="cpu"):
    """``gpukernels bench`` on the device the test means (the default picks CUDA when present)."""
    return cli.main(["bench", "--device", device, *argv])


def _tiny_cases(broken: bool = False) -> list[BenchCase]:
    cases = []
    for n in (16, 64, 256):
        for mode in ("fwd", "bwd"):
            cases.append(BenchCase(
                family="tiny", op="scale", mode=mode, dtype="float32", size=f"n={n}", setup=_tiny_setup(n),
                providers={"gpukernels": lambda x: lambda: np.multiply(_host(x), 2.0),
                           "torch": lambda x: lambda: x * 2.0},
                bytes_moved=8 * n))
        cases.append(BenchCase(
            family="tiny", op="outer", mode="fwd", dtype="float32", size=f"n={n}", setup=_tiny_setup(n),
            providers={"gpukernels": lambda x: lambda: np.outer(_host(x), _host(x)),
                       "torch": lambda x: lambda: torch_outer(x),
                       "torch.compile": lambda x: lambda: torch_outer(x)},
            provider_devices={"torch.compile": ("cuda",)}, bytes_moved=4 * (2 * n + n * n), flops=n * n))
    cases.append(BenchCase(
        family="tiny", op="scale", mode="fwd", dtype="bfloat16", size="n=16", setup=_tiny_setup(16),
        providers={"gpukernels": lambda x: lambda: x, "torch": lambda x: lambda: x}, bytes_moved=64))
    if broken:
        cases.append(BenchCase(
            family="tiny", op="broken", mode="fwd", dtype="float32", size="n=16", setup=_tiny_setup(16),
            providers={"gpukernels": lambda x: lambda: 1 / 0, "torch": lambda x: lambda: x}, bytes_moved=128))
    return cases


def torch_outer(x):
    import torch

    return torch.outer(x, x)


@pytest.fixture
def tiny(monkeypatch):
    """The registry holds only the tiny cases; peaks are measured on small buffers to stay fast."""
    monkeypatch.setattr(registry, "all_cases", lambda: _tiny_cases())
    monkeypatch.setattr(harness, "measure_peaks", lambda device: harness.Peaks(
        harness.copy_bandwidth_gbs(device, 1 << 20), {"float32": harness.matmul_peak_tflops(device, "float32", 64)}))


def _read_csv(path):
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_the_whole_command_on_a_tiny_case_set(tiny, tmp_path, capsys):
    out = tmp_path / "results"
    assert _bench("--all", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "CPU run" in captured.out and "GPU numbers need a GPU" in captured.out
    assert "speed-up" in captured.out and "x vs torch" in captured.out
    assert "20/20" in captured.err  # progress bar: 10 cases x 2 providers that run on the CPU

    columns, rows = _read_csv(out / "bench.csv")
    assert tuple(columns) == bench.COLUMNS
    # every case and provider that runs on the CPU has a time; torch.compile is GPU-only here
    timed = {(r["op"], r["provider"], r["mode"], r["size"], r["dtype"]) for r in rows if r["metric"] == "time_ms"}
    expected = {(c.op, p, c.mode, c.size, c.dtype) for c in _tiny_cases() for p in c.providers if p != "torch.compile"}
    assert timed == expected
    assert all(r["device"].startswith("CPU") and "torch" in r["versions"] and r["timestamp"] for r in rows)

    data = json.loads((out / "bench.json").read_text())
    assert tuple(data["columns"]) == bench.COLUMNS
    assert all(tuple(r) == bench.COLUMNS for r in data["rows"]) and len(data["rows"]) == len(rows)
    assert data["meta"]["copy_gbs"] > 0 and "GPU numbers need a GPU" in data["meta"]["note"]

    by_key = {(r["op"], r["provider"], r["mode"], r["size"], r["dtype"], r["metric"]): r for r in rows}
    for (op, provider, mode, size, dtype) in expected:
        t = by_key[(op, provider, mode, size, dtype, "time_ms")]
        assert float(t["p20"]) <= float(t["median"]) <= float(t["p80"])
        gbs = by_key[(op, provider, mode, size, dtype, "GB/s")]
        case = next(c for c in _tiny_cases() if (c.op, c.mode, c.size, c.dtype) == (op, mode, size, dtype))
        assert float(gbs["median"]) == pytest.approx(case.bytes_moved / (float(t["median"]) * 1e-3) / 1e9)
        assert float(gbs["p20"]) <= float(gbs["median"]) <= float(gbs["p80"])
        assert (op, provider, mode, size, dtype, "pct_copy_bw") in by_key
        if op == "outer":
            assert (op, provider, mode, size, dtype, "TFLOP/s") in by_key
            assert (op, provider, mode, size, dtype, "pct_matmul_peak") in by_key
        if provider == "gpukernels":
            speedup = by_key[(op, provider, mode, size, dtype, "speedup_vs_torch")]
            baseline = by_key[(op, "torch", mode, size, dtype, "time_ms")]
            assert float(speedup["median"]) == pytest.approx(float(baseline["median"]) / float(t["median"]))
        else:
            assert not any(k[1] == provider and k[-1].startswith("speedup") for k in by_key)

    plots = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in plots] == ["outer.png", "scale.png"]
    import matplotlib.pyplot as plt

    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_SIGNATURE
        image = plt.imread(plot)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # drawn, not blank


def test_compare_prints_old_over_new_ratios(tiny, tmp_path, capsys):
    first = tmp_path / "first"
    assert _bench("--op", "scale", "--mode", "fwd", "--out", str(first)) == 0
    columns, rows = _read_csv(first / "bench.csv")
    for r in rows:  # an "old" run exactly 1000x slower than whatever this run measures
        if r["metric"] == "time_ms":
            r["median"] = str(float(r["median"]) * 1000)
    old = tmp_path / "old.csv"
    with old.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert _bench("--op", "scale", "--mode", "fwd", "--out", str(tmp_path / "second"), "--compare", str(old)) == 0
    out = capsys.readouterr().out
    section = out.split("compared with", 1)[1]
    lines = [line.split() for line in section.splitlines() if line.startswith("scale")]
    assert {(line[1], line[3]) for line in lines} == {(p, s) for p in ("gpukernels", "torch") for s in ("n=16", "n=256")}
    assert all(float(line[-1].rstrip("x")) > 10 for line in lines)  # the old run was 1000x slower


def test_compare_ratios_are_old_time_over_new_time():
    def row(provider, size, median, metric="time_ms"):
        return dict(op="scale", provider=provider, mode="fwd", size=size, dtype="float32", metric=metric, median=median)

    old = [row("gpukernels", "n=16", "2.0"), row("torch", "n=16", "3.0"), row("torch", "n=64", "1.0"),
           row("gpukernels", "n=16", "99", metric="GB/s")]
    new = [row("gpukernels", "n=16", 1.0), row("torch", "n=16", 6.0), row("gpukernels", "n=256", 1.0)]
    ratios = {c.key[1]: c.ratio for c in bench.compare(old, new)}
    assert ratios == {"gpukernels": 2.0, "torch": 0.5}


def test_default_set_is_one_dtype_and_the_end_sizes(tiny):
    chosen = bench.select_cases(registry.all_cases(), "cpu")
    assert {(c.op, c.mode, c.size, c.dtype) for c in chosen} == {
        (op, mode, size, "float32") for op, mode in (("scale", "fwd"), ("scale", "bwd"), ("outer", "fwd"))
        for size in ("n=16", "n=256")}
    everything = bench.select_cases(registry.all_cases(), "cpu", everything=True)
    assert len(everything) == len(_tiny_cases())
    assert [c.dtype for c in bench.select_cases(registry.all_cases(), "cpu", dtype="bf16")] == ["bfloat16"]
    assert {c.size for c in bench.select_cases(registry.all_cases(), "cpu", op="scale", size="64")} == {"n=64"}


def test_the_real_default_set_is_short():
    chosen = bench.select_cases(registry.all_cases(), "cpu")
    groups = {(c.family, c.op, c.mode) for c in chosen}
    assert len(chosen) <= 2 * len(groups)
    assert all(c.dtype == "float32" for c in chosen if c.family == "activation")


def test_a_provider_that_raises_is_reported_and_fails_the_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(registry, "all_cases", lambda: _tiny_cases(broken=True))
    assert _bench("--op", "broken", "--out", str(tmp_path)) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out
    _, rows = _read_csv(tmp_path / "bench.csv")
    assert any(r["provider"] == "gpukernels" and r["metric"].startswith("error: ZeroDivisionError") for r in rows)
    assert any(r["provider"] == "torch" and r["metric"] == "time_ms" for r in rows)


def test_the_old_module_entry_point_still_runs(tiny, tmp_path, capsys):
    assert bench_run.main(["--device", "cpu", "--op", "outer", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.csv").exists()


def test_device_defaults_to_cuda_when_present_and_is_checked():
    assert bench.choose_device(None, cuda_available=True) == "cuda"
    assert bench.choose_device(None, cuda_available=False) == "cpu"
    assert bench.choose_device("cpu", cuda_available=True) == "cpu"
    assert bench.choose_device("cuda", cuda_available=True) == "cuda"
    with pytest.raises(bench.BenchInputError, match="--device cuda: torch sees no CUDA device"):
        bench.choose_device("cuda", cuda_available=False)
    with pytest.raises(bench.BenchInputError, match="--device must be one of cuda, cpu, got 'tpu'"):
        bench.choose_device("tpu", cuda_available=True)


def test_device_cuda_without_a_gpu_is_a_clear_error(tiny, monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on any machine
    out = tmp_path / "never"
    assert _bench("--out", str(out), device="cuda") == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.gpu
def test_the_tiny_case_set_on_the_gpu(tiny, tmp_path, capsys):
    out = tmp_path / "results"
    assert _bench("--all", "--op", "scale", "--out", str(out), device="cuda") == 0
    captured = capsys.readouterr()
    assert "CPU run" not in captured.out and "x vs torch" in captured.out
    assert "14/14" in captured.err  # 7 scale cases x 2 providers
    _, rows = _read_csv(out / "bench.csv")
    assert rows and not any(r["device"].startswith("CPU") for r in rows)
    assert json.loads((out / "bench.json").read_text())["meta"]["note"] == ""


def test_peaks_and_timer_on_the_cpu():
    assert harness.copy_bandwidth_gbs("cpu", 1 << 20) > 0
    assert harness.matmul_peak_tflops("cpu", "float32", 64) > 0
    timing = harness.time_cpu(lambda: sum(range(1000)), min_seconds=0.0, min_runs=10)
    assert 0 < timing.p20_ms <= timing.median_ms <= timing.p80_ms


def test_progress_bar_writes_every_step():
    import io

    stream = io.StringIO()
    progress = bench.Progress(3, stream=stream, width=3)
    for label in ("a", "b", "c"):
        progress(label)
    progress.close()
    assert stream.getvalue().splitlines() == ["[#..] 1/3 a", "[##.] 2/3 b", "[###] 3/3 c"]


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, before anything runs or is written


@pytest.mark.parametrize("argv, words", [
    (["--op", "no_such_op"], ["unknown op 'no_such_op'", "known:", "scale", "outer"]),
    (["--dtype", "float64"], ["unknown dtype 'float64'", "bfloat16", "float32"]),
    (["--mode", "sideways"], ["unknown mode 'sideways'", "bwd", "full", "fwd"]),
    (["--op", "scale", "--size", "n=7"], ["unknown size 'n=7'", "n=16", "n=256"]),
    (["--op", "outer", "--dtype", "bf16"], ["no benchmark case matches"]),
], ids=["op", "dtype", "mode", "size", "empty-selection"])
def test_bad_filters_are_clear_errors(tiny, tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    assert _bench(*argv, "--out", str(out)) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err
    assert not out.exists()  # checked before anything was written


def test_unwritable_output_path_is_a_clear_error(tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _bench("--out", str(blocker / "results")) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot write there" in err


@pytest.mark.parametrize("content, words", [
    (None, ["--compare", "cannot read it"]),
    ("a,b\n1,2\n", ["--compare", "not a gpukernels bench CSV", "missing columns", "metric"]),
], ids=["missing-file", "not-a-bench-csv"])
def test_bad_compare_file_is_a_clear_error(tiny, tmp_path, capsys, content, words):
    old = tmp_path / "old.csv"
    if content is not None:
        old.write_text(content)
    assert _bench("--out", str(tmp_path / "out"), "--compare", str(old)) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_nan_is_written_as_null_in_json(tmp_path):
    rows = [dict(zip(bench.COLUMNS, ("op", "p", "fwd", "n=1", "float32", "error: x", math.nan, math.nan,
                                     math.nan, "CPU", "v", "t")))]
    data = json.loads(bench.write_json(rows, tmp_path / "r.json", {}).read_text())
    assert data["rows"][0]["median"] is None


def test_default_set_breaks_ties_in_work_by_size_name_not_by_hash_order():
    from types import SimpleNamespace

    def case(size, work):
        return SimpleNamespace(family="f", op="op", mode="fwd", dtype="float32", size=size, work=work,
                               in_default_set=True)

    cases = [case("b", 10), case("a", 10), case("c", 10), case("z", 5), case("y", 20), case("x", 20)]
    for order in (cases, cases[::-1], cases[2:] + cases[:2]):
        chosen = bench._default_set(order, "cpu", explicit_dtype=False, explicit_size=False)
        assert {c.size for c in chosen} == {"z", "y"}


# ---------------------------------------------------------------------------------------------
# --threads: both sides on N threads for a CPU run, restored afterwards


def test_threads_puts_both_sides_on_n_threads_while_timing_and_restores_them(tiny, tmp_path, capsys, monkeypatch):
    import os

    import torch

    from gpukernels.reference import _parallel

    monkeypatch.delenv(_parallel.ENV_VAR, raising=False)
    before = torch.get_num_threads()
    blas = _parallel.openblas_threads()
    blas_before = blas[0]() if blas is not None else None
    seen = []

    def spy(cases, device, progress, **kwargs):
        seen.append((torch.get_num_threads(), _parallel.num_threads(), blas[0]() if blas is not None else 1))
        return real_run_cases(cases, device, progress, **kwargs)

    real_run_cases = harness.run_cases
    monkeypatch.setattr(harness, "run_cases", spy)
    out = tmp_path / "one"
    assert _bench("--op", "scale", "--threads", "1", "--out", str(out)) == 0
    assert seen == [(1, 1, 1)]
    assert "threads: 1 each side (--threads 1)" in capsys.readouterr().out
    assert json.loads((out / "bench.json").read_text())["meta"]["threads"] == "1 each side (--threads 1)"
    assert torch.get_num_threads() == before and _parallel.ENV_VAR not in os.environ
    assert blas is None or blas[0]() == blas_before


def test_without_threads_the_run_records_each_sides_default(tiny, tmp_path, capsys):
    out = tmp_path / "default"
    assert _bench("--op", "scale", "--out", str(out)) == 0
    meta = json.loads((out / "bench.json").read_text())["meta"]
    assert meta["threads"].startswith("each side's default (PyTorch ")


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_threads_is_a_clear_error_before_anything_runs(tiny, tmp_path, capsys, value):
    out = tmp_path / "never"
    assert _bench("--threads", value, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "--threads must be a whole number >= 1" in err and repr(value) in err
    assert not out.exists()


def test_threads_on_a_gpu_run_is_a_clear_error(tiny, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "never"
    assert _bench("--threads", "1", "--out", str(out), device="cuda") == 2
    assert "--threads applies to CPU runs (--device cpu) only" in capsys.readouterr().err
    assert not out.exists()
