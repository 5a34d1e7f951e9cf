"""Inner-loop instructions per FLOP of the SDPA kernels, beside Triton's fused-attention tutorial.

Compiled facts: the main matrix loop of each build (``verify.sass_loop``: the smallest innermost
loop with HGMMA/HMMA, the unmasked one, in the SASS of the launch-specialised sm_80/sm_90
cubin), its instructions per warp per iteration, by class. Model: the FLOPs one iteration's matrix products do,
2 x BLOCK_M x BLOCK_N x depth per product (``PRODUCT_DEPTHS``). Derived: warp instructions a
program issues per 1000 of those FLOPs, ``instructions x warps x 1000 / FLOPs`` (every warp runs
the body once per iteration; the SMs' schedulers issue warp instructions, so this is the issue
cost of a FLOP, whatever the tile and warp count).

The tutorial figures (``TUTORIAL_FORWARD``, ``TUTORIAL_FORWARD_AT_OUR_TILES``) were measured the
same way, once, and are kept here as data (its code never is): see those tables' comments.
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
    space_per_kflop: tuple[float, float] | None = None  # lowest and highest over its autotune space

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
# its space with the fewest instructions per FLOP among those that build without spilling (the
# best the tutorial's loop does, by our gate's rule), with their range beside it. Keyed by
# (target, d, causal); causal on sm_90 takes its off-band loop (stage 1, no mask), the smaller of
# its two, as ours takes our unmasked loop. No causal figure on sm_80: there the tutorial's
# block-pointer forward tests for the diagonal inside its one loop, so that loop's body holds
# both the masked and the unmasked path and a static count is not like for like.
TUTORIAL_FORWARD: dict[tuple[int, int, bool], TutorialLoop] = {
    (80, 64, False): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=3,warps=4", 4, 819,
        {"matrix": 128, "memory": 173, "float": 412, "integer": 65, "control": 41, "other": 0},
        2097152, space_per_kflop=(1.5621, 2.3041)),  # 12 of 12 configs spill-free
    (80, 128, False): TutorialLoop("BLOCK_M=64,BLOCK_N=64,stages=3,warps=4", 4, 594,
        {"matrix": 128, "memory": 138, "float": 238, "integer": 63, "control": 27, "other": 0},
        2097152, space_per_kflop=(1.133, 1.6556)),  # 9 of 12 configs spill-free
    (90, 64, False): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=2,warps=4", 4, 518,
        {"matrix": 16, "memory": 19, "float": 380, "integer": 84, "control": 19, "other": 0},
        2097152, space_per_kflop=(0.988, 1.7166)),  # 16 of 16 configs spill-free
    (90, 64, True): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=6,warps=4", 4, 514,
        {"matrix": 16, "memory": 18, "float": 380, "integer": 81, "control": 19, "other": 0},
        2097152, space_per_kflop=(0.9804, 1.7166)),  # 16 of 16 configs spill-free
    (90, 128, False): TutorialLoop("BLOCK_M=64,BLOCK_N=128,stages=2,warps=4", 4, 489,
        {"matrix": 16, "memory": 11, "float": 366, "integer": 77, "control": 19, "other": 0},
        4194304, space_per_kflop=(0.4663, 0.9651)),  # 23 of 28 configs spill-free
    (90, 128, True): TutorialLoop("BLOCK_M=128,BLOCK_N=128,stages=4,warps=8", 8, 491,
        {"matrix": 16, "memory": 10, "float": 366, "integer": 80, "control": 19, "other": 0},
        8388608, space_per_kflop=(0.4683, 1.0147)),  # 20 of 28 configs spill-free
}
# The same kernels and launch at our forward's own tiles (BLOCK_M, BLOCK_N, warps; stages as ours,
# Triton's default 3 where ours sets none), whatever its filter keeps: the like-for-like figure,
# where only the code differs. Keyed by (target, d, causal, BLOCK_M, BLOCK_N, warps).
TUTORIAL_FORWARD_AT_OUR_TILES: dict[tuple[int, int, bool, int, int, int], TutorialLoop] = {
    (90, 64, False, 128, 64, 8): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=3,warps=8", 8, 308,
        {"matrix": 8, "memory": 11, "float": 190, "integer": 80, "control": 19, "other": 0},
        2097152),
    (90, 128, False, 128, 64, 8): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=2,warps=8", 8, 340,
        {"matrix": 12, "memory": 11, "float": 222, "integer": 76, "control": 19, "other": 0},
        4194304),
    (80, 64, False, 64, 64, 4): TutorialLoop("BLOCK_M=64,BLOCK_N=64,stages=3,warps=4", 4, 437,
        {"matrix": 64, "memory": 102, "float": 206, "integer": 52, "control": 13, "other": 0},
        1048576),
    (80, 128, False, 64, 32, 8): TutorialLoop("BLOCK_M=64,BLOCK_N=32,stages=3,warps=8", 8, 235,
        {"matrix": 32, "memory": 64, "float": 84, "integer": 33, "control": 22, "other": 0},
        1048576),
    (90, 64, True, 128, 64, 8): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=3,warps=8", 8, 308,
        {"matrix": 8, "memory": 10, "float": 190, "integer": 81, "control": 19, "other": 0},
        2097152),
    (90, 128, True, 128, 64, 8): TutorialLoop("BLOCK_M=128,BLOCK_N=64,stages=2,warps=8", 8, 342,
        {"matrix": 12, "memory": 10, "float": 222, "integer": 79, "control": 19, "other": 0},
        4194304),
}


def tutorial_for(kernel: str, target: int, tags: dict[str, str]) -> tuple[TutorialLoop | None, TutorialLoop | None]:
    """(the tutorial at our tiles, the tutorial's best config) beside a 16-bit forward build
    (the tutorial is fp16 only: bf16 builds are shown beside its fp16 figure)."""
    if kernel != "sdpa_forward" or tags.get("dtype") not in ("fp16", "bf16"):
        return None, None
    key = (target, int(tags["d"]), tags.get("causal") == "True")
    tiles = (int(tags["block_m"]), int(tags["block_n"]), int(tags["warps"]))
    return TUTORIAL_FORWARD_AT_OUR_TILES.get(key + tiles), TUTORIAL_FORWARD.get(key)


def _tutorial_cells(tut: TutorialLoop | None) -> tuple:
    if tut is None:
        return (None,) * (len(CLASSES) + 3)
    return (tut.config, tut.instructions, *(tut.by_class[kind] for kind in CLASSES), round(tut.per_kflop, 3))


INNER_LOOP_COLUMNS = (
    "kernel", "config", "target", "launch_warps_per_block", "compiled_loop_instructions",
    *(f"compiled_loop_{kind}" for kind in CLASSES), "compiled_matrix_loop_sizes", "model_loop_flops",
    "derived_instructions_per_kflop", "derived_matrix_work",
    *(f"tutorial_same_tile_{c}" for c in ("config", "loop_instructions", *(f"loop_{k}" for k in CLASSES),
                                          "instructions_per_kflop")),
    *(f"tutorial_best_{c}" for c in ("config", "loop_instructions", *(f"loop_{k}" for k in CLASSES),
                                     "instructions_per_kflop")),
    "tutorial_space_instructions_per_kflop")


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
        same_tile, best = tutorial_for(r.kernel, r.target, tags)
        records.append(dict(zip(INNER_LOOP_COLUMNS, (
            r.kernel, r.config, f"sm_{r.target}", warps, loop.instructions,
            *(loop.by_class[kind] for kind in CLASSES), " ".join(map(str, loop.loop_sizes)), flops,
            round(loop.per_kflop(warps, flops), 3), round(loop.matrix_work(warps, flops), 3),
            *_tutorial_cells(same_tile), *_tutorial_cells(best),
            best and f"{best.space_per_kflop[0]:.3f}-{best.space_per_kflop[1]:.3f}"))))
    return records


SHORT = {"launch_warps_per_block": "warps", "compiled_loop_instructions": "C:instr/warp",
         "compiled_loop_matrix": "mma", "compiled_loop_memory": "mem", "compiled_loop_float": "fp",
         "compiled_loop_integer": "int", "compiled_loop_control": "ctl", "compiled_loop_other": "oth",
         "compiled_matrix_loop_sizes": "C:loops", "model_loop_flops": "model FLOP/iter",
         "derived_instructions_per_kflop": "D:instr/kFLOP", "derived_matrix_work": "D:mma work",
         "tutorial_same_tile_loop_instructions": "T:instr/warp", "tutorial_same_tile_loop_matrix": "mma",
         "tutorial_same_tile_loop_memory": "mem", "tutorial_same_tile_loop_float": "fp",
         "tutorial_same_tile_loop_integer": "int", "tutorial_same_tile_loop_control": "ctl",
         "tutorial_same_tile_instructions_per_kflop": "T:instr/kFLOP", "tutorial_best_config": "T:best config",
         "tutorial_best_instructions_per_kflop": "T:best instr/kFLOP",
         "tutorial_space_instructions_per_kflop": "T:space"}
# The terminal shows the builds of a typical launch (no mask, aligned, lengths divisible by the
# tiles); report_inner_loop.csv has every build.
TERMINAL_LAUNCH = "launch=typical,"
TERMINAL_COLUMNS = ("kernel", "target", "dtype", "d", "causal", "block", "launch_warps_per_block",
                    "compiled_loop_instructions", "compiled_loop_matrix", "compiled_loop_memory", "compiled_loop_float",
                    "compiled_loop_integer", "compiled_loop_control", "compiled_loop_other",
                    "derived_instructions_per_kflop", "derived_matrix_work", "tutorial_same_tile_loop_instructions",
                    "tutorial_same_tile_loop_matrix", "tutorial_same_tile_loop_memory", "tutorial_same_tile_loop_float",
                    "tutorial_same_tile_loop_integer", "tutorial_same_tile_loop_control",
                    "tutorial_same_tile_instructions_per_kflop", "tutorial_best_config",
                    "tutorial_best_instructions_per_kflop", "tutorial_space_instructions_per_kflop")


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
    "INNER LOOP (SDPA, tensor-core builds). C: compiled fact, the main matrix loop (the smallest innermost loop "
    "with HGMMA/HMMA: the unmasked one) in the SASS of the sm_80/sm_90 build: instructions per warp per iteration, "
    "by class (mma: matrix, mem: loads/stores/TMA/cp.async/shuffles, fp: FP32 math, MUFU.EX2 and conversions, int: "
    "integer/address/moves/predicates, ctl: branches/barriers/waits). D: derived, warp instructions per 1000 FLOPs "
    "of the loop's matrix products (instr/warp x warps x 1000 / (2 BLOCK_M BLOCK_N x sum of product depths)), and "
    "the FLOPs its matrix instructions do (by their m x n x k shapes) per FLOP the products need (mma work: 1.0 "
    "unless warps repeat a product's rows). T: Triton's fused-attention tutorial forward (fp16), measured the same "
    "way: at our tiles and warps (instr/warp, by class, instr/kFLOP), and the spill-free config of its own autotune "
    "space with the fewest instr/kFLOP, with the range over that space. Typical launches only; "
    "report_inner_loop.csv has every build.")
