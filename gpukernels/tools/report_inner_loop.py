"""Inner-loop instructions per FLOP of the SDPA kernels, beside Triton's fused-attention tutorial.

Compiled facts: the main matrix loop of each build (``verify.sass_loop``: the first innermost
loop with HGMMA/HMMA in the SASS of the launch-specialised sm_80/sm_90 cubin), its instructions
per warp per iteration, by class. Model: the FLOPs one iteration's matrix products do,
2 x BLOCK_M x BLOCK_N x depth per product (``PRODUCT_DEPTHS``). Derived: warp instructions a
program issues per 1000 of those FLOPs, ``instructions x warps x 1000 / FLOPs`` (every warp runs
the body once per iteration; the SMs' schedulers issue warp instructions, so this is the issue
cost of a FLOP, whatever the tile and warp count).

The tutorial figure (``TUTORIAL_FORWARD``) was measured the same way, once, and is kept here as
data (its code never is): see that table's comment.
"""

from __future__ import annotations

from dataclasses import dataclass

from .verify.sass_loop import CLASSES

# The depth (inner dimension: the head dim d of Q/K or dv of V, padded to the kernel's BLOCK_D /
# BLOCK_DV) of each matrix product one iteration of the kernel's main loop makes; each product is
# BLOCK_M x BLOCK_N x depth. dK/dV by the gradients the build makes (tag "grads").
PRODUCT_DEPTHS = {
    "sdpa_forward": {"both": ("d", "dv")},  # S = Q K^T, O += P V
    "sdpa_backward_dq": {"both": ("d", "dv", "d")},  # S = Q K^T, dP = dO V^T, dQ += dS K
    # S^T = K Q^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q
    "sdpa_backward_dkdv": {"both": ("d", "dv", "dv", "d"), "dk": ("d", "dv", "d"), "dv": ("d", "dv")},
}


def config_tags(config: str) -> dict[str, str]:
    """The ``key=value`` parts of a gate config label."""
    return dict(part.split("=", 1) for part in config.split(",") if "=" in part)


def loop_flops(kernel: str, tags: dict[str, str]) -> int | None:
    """FLOPs of one iteration of the kernel's main loop (one program), None without a model."""
    depths = PRODUCT_DEPTHS.get(kernel, {}).get(tags.get("grads", "both"))
    if depths is None:
        return None
    d = int(tags["d"])  # the gate builds BLOCK_D = BLOCK_DV = d
    return sum(2 * int(tags["block_m"]) * int(tags["block_n"]) * {"d": d, "dv": d}[x] for x in depths)


@dataclass(frozen=True)
class TutorialLoop:
    config: str  # its autotune config: BLOCK_M, BLOCK_N, num_stages, num_warps
    warps: int
    instructions: int  # per warp per iteration of its main loop
    by_class: dict[str, int]
    flops: int  # per iteration: 2 x BLOCK_M x BLOCK_N x 2d
    space_per_kflop: tuple[float, float]  # lowest and highest over its whole autotune space

    @property
    def per_kflop(self) -> float:
        return 1000.0 * self.instructions * self.warps / self.flops


# Triton's fused-attention tutorial (triton-lang/triton python/tutorials/06-fused-attention.py at
# commit 003da478d84f5bb0f51b3988cf0ea0bbe60282b7), forward kernel, fp16, measured with triton
# 3.7.1 on 2026-11-30: its forward kernels copied into a scratch directory outside this
# repository; each configuration of its own autotune list that its ``keep``/``keep_tma`` filter
# keeps (sm_90: ``_attn_fwd_tma``, host TensorDescriptors with the block shapes its pre-hook sets,
# BLOCK_M {64, 128} x BLOCK_N {32, 64, 128} x stages {2, 3, 4, 6} x warps {4, 8}, no 8 warps below
# 128x128 tiles; sm_80: ``_attn_fwd``, block pointers, BLOCK_M {64, 128} x BLOCK_N {32, 64} x
# stages {3, 4, 7} x 4 warps; BLOCK_N <= d as its static_assert asks) built for sm_80 and sm_90
# with the launch specialisation of Z=4, H=16, N_CTX=1024, contiguous fp16 tensors (computed by
# this gate's ``triton_aot.launch_specialization``), and counted by ``verify.sass_loop``. Its
# autotuner picks by time on a GPU, which this machine lacks, so the figure kept is the config of
# its space with the fewest instructions per FLOP (the best the tutorial's loop does), with the
# whole space's range beside it. Keyed by (target, d, causal); causal takes its off-band loop
# (stage 1, no mask), the first in program order, as ours takes our unmasked loop.
TUTORIAL_FORWARD: dict[tuple[int, int, bool], TutorialLoop] = {}


def tutorial_for(kernel: str, target: int, tags: dict[str, str]) -> TutorialLoop | None:
    if kernel != "sdpa_forward" or tags.get("dtype") not in ("fp16", "bf16"):
        return None
    return TUTORIAL_FORWARD.get((target, int(tags["d"]), tags.get("causal") == "True"))


INNER_LOOP_COLUMNS = (
    "kernel", "config", "target", "launch_warps_per_block", "compiled_loop_instructions",
    *(f"compiled_loop_{kind}" for kind in CLASSES), "compiled_matrix_loops", "model_loop_flops",
    "derived_instructions_per_kflop",
    "tutorial_config", "tutorial_loop_instructions", *(f"tutorial_loop_{kind}" for kind in CLASSES),
    "tutorial_instructions_per_kflop", "tutorial_space_instructions_per_kflop")


def inner_loop_records(rows) -> list[dict]:
    """One record per build with a main matrix loop and a FLOP model (the SDPA forward, dQ and
    dK/dV kernels with tensor-core products), the tutorial's figure beside the forward's."""
    records = []
    for r in rows:
        tags = config_tags(r.config)
        flops = loop_flops(r.kernel, tags)
        if r.inner_loop is None or flops is None:
            continue
        warps = int(tags["warps"])
        loop = r.inner_loop
        tut = tutorial_for(r.kernel, r.target, tags)
        records.append(dict(zip(INNER_LOOP_COLUMNS, (
            r.kernel, r.config, f"sm_{r.target}", warps, loop.instructions,
            *(loop.by_class[kind] for kind in CLASSES), loop.matrix_loops, flops,
            round(loop.per_kflop(warps, flops), 3),
            tut and tut.config, tut and tut.instructions, *((tut.by_class[k] if tut else None) for k in CLASSES),
            tut and round(tut.per_kflop, 3),
            tut and f"{tut.space_per_kflop[0]:.3f}-{tut.space_per_kflop[1]:.3f}"))))
    return records


SHORT = {"launch_warps_per_block": "warps", "compiled_loop_instructions": "C:loop instr/warp",
         "compiled_loop_matrix": "mma", "compiled_loop_memory": "mem", "compiled_loop_float": "fp",
         "compiled_loop_integer": "int", "compiled_loop_control": "ctl", "compiled_loop_other": "oth",
         "compiled_matrix_loops": "C:loops", "model_loop_flops": "model FLOP/iter",
         "derived_instructions_per_kflop": "D:instr/kFLOP", "tutorial_config": "T:config",
         "tutorial_loop_instructions": "T:instr/warp", "tutorial_loop_matrix": "T:mma",
         "tutorial_loop_memory": "T:mem", "tutorial_loop_float": "T:fp", "tutorial_loop_integer": "T:int",
         "tutorial_loop_control": "T:ctl", "tutorial_loop_other": "T:oth",
         "tutorial_instructions_per_kflop": "T:instr/kFLOP", "tutorial_space_instructions_per_kflop": "T:space"}
# The terminal shows the builds of a typical launch (no mask, aligned, lengths divisible by the
# tiles); report_inner_loop.csv has every build.
TERMINAL_LAUNCH = "launch=typical,"
TERMINAL_COLUMNS = ("kernel", "target", "dtype", "d", "causal", "block", "launch_warps_per_block",
                    "compiled_loop_instructions", "compiled_loop_matrix", "compiled_loop_memory", "compiled_loop_float",
                    "compiled_loop_integer", "compiled_loop_control", "compiled_loop_other",
                    "derived_instructions_per_kflop", "tutorial_config", "tutorial_loop_instructions",
                    "tutorial_loop_matrix", "tutorial_loop_memory", "tutorial_loop_float", "tutorial_loop_integer",
                    "tutorial_loop_control", "tutorial_instructions_per_kflop", "tutorial_space_instructions_per_kflop")


def terminal_records(records: list[dict]) -> list[dict]:
    out = []
    for rec in records:
        if TERMINAL_LAUNCH not in rec["config"] + ",":
            continue
        tags = config_tags(rec["config"])
        stages = f"/s{tags['stages']}" if "stages" in tags else ""
        out.append({**rec, "dtype": tags["dtype"], "d": tags["d"], "causal": tags["causal"],
                    "block": f"{tags['block_m']}x{tags['block_n']}{stages}",
                    "kernel": rec["kernel"] + ("" if tags.get("grads", "both") == "both" else f"[{tags['grads']}]")})
    return out


HEADING = (
    "INNER LOOP (SDPA, tensor-core builds). C: compiled fact, the main matrix loop (first innermost loop with "
    "HGMMA/HMMA) in the SASS of the sm_80/sm_90 build: instructions per warp per iteration, by class (mma: matrix, "
    "mem: loads/stores/TMA/cp.async/shuffles, fp: FP32 math, MUFU.EX2 and conversions, int: integer/address/moves/"
    "predicates, ctl: branches/barriers/waits). D: derived, warp instructions per 1000 FLOPs of the loop's matrix "
    "products (instr/warp x warps x 1000 / (2 BLOCK_M BLOCK_N x sum of product depths)). T: Triton's fused-attention "
    "tutorial forward (fp16), measured the same way: the config of its autotune space with the fewest instr/kFLOP, "
    "and the range over that space. Typical launches only; report_inner_loop.csv has every build.")
