"""The inner-loop finder (gpukernels.tools.verify.sass_loop) on small hand-written SASS listings
(one loop, nested loops, the innermost loop with a matrix instruction, side-by-side loops, the
out-of-line barrier retries ptxas puts past EXIT, no loop) and on a real sm_90 SDPA forward
build, and the report's FLOP model and instructions-per-FLOP figure."""

from __future__ import annotations

import pytest

from gpukernels.tools import report, report_inner_loop
from gpukernels.tools.verify.sass_loop import (CLASSES, NoMatrixLoop, hot_loop, instruction_class, loop_facts,
                                               loops, matrix_flops_per_warp, matrix_loops, parse)


def listing(*instructions: str) -> str:
    """A cuobjdump-style listing, one instruction every 16 bytes; ``BRA @n`` branches to the n-th
    instruction (0-based)."""
    lines = ["\tcode for sm_90a", "\t\tFunction : kernel"]
    for index, text in enumerate(instructions):
        if "@" in text.split()[-1]:
            head, target = text.rsplit("@", 1)
            text = f"{head}{hex(16 * int(target))}"
        lines.append(f"        /*{16 * index:04x}*/                   {text} ;   /* 0x000fe20000000f00 */")
        lines.append("                                                                  /* 0x000fe20000000f00 */")
    return "\n".join(lines) + "\n"


def test_one_loop_is_the_span_from_the_branch_target_to_the_back_branch():
    sass = listing(
        "MOV R0, RZ",                                   # 0 before the loop
        "LDS.128 R4, [R2]",                             # 1 body starts
        "HMMA.16816.F32 R8, R4, R6, R8",                # 2
        "FFMA R9, R9, R10, R11",                        # 3
        "MUFU.EX2 R12, R12",                            # 4
        "IADD3 R0, R0, 0x1, RZ",                        # 5
        "ISETP.GE.AND P0, PT, R0, R13, PT",             # 6
        "@!P0 BRA @1",                                  # 7 back branch
        "EXIT",                                         # 8
    )
    instructions = parse(sass)
    assert [i.address for i in instructions] == [16 * n for n in range(9)]
    assert instructions[7].target == 16
    (loop,) = loops(instructions)
    assert (loop.start, loop.end, len(loop.body)) == (16, 112, 7)
    facts = loop_facts(sass)
    assert facts.instructions == 7 and facts.matrix_loops == 1
    assert facts.by_class == {"matrix": 1, "memory": 1, "float": 2, "integer": 2, "control": 1, "other": 0}
    # 7 instructions per warp x 4 warps per 56000 FLOPs
    assert facts.per_kflop(4, 56_000) == pytest.approx(0.5)


def test_the_innermost_loop_with_a_matrix_instruction_is_the_hot_one():
    # outer loop (1..9) around an inner matrix loop (2..6) and a spin-wait loop with no MMA (7..8)
    sass = listing(
        "MOV R0, RZ",                                   # 0
        "LDG.E.128 R4, desc[UR4][R2.64]",               # 1 outer body
        "HGMMA.64x64x16.F32 R24, gdesc[UR8], R24",      # 2 inner body
        "FMUL R25, R25, R3",                            # 3
        "UIADD3 UR4, UR4, 0x40, URZ",                   # 4
        "ISETP.NE.AND P0, PT, R0, R1, PT",              # 5
        "@P0 BRA @2",                                   # 6 inner back branch
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR6], R5",  # 7 spin wait
        "@!P1 BRA @7",                                  # 8
        "@P2 BRA @1",                                   # 9 outer back branch
        "EXIT",                                         # 10
    )
    instructions = parse(sass)
    assert [(loop.start // 16, loop.end // 16) for loop in loops(instructions)] == [(1, 9), (2, 6), (7, 8)]
    hot = hot_loop(instructions)
    assert (hot.start // 16, hot.end // 16) == (2, 6)
    assert [i.opcode for i in hot.body][0] == "HGMMA.64x64x16.F32"
    # an outer loop with the matrix instruction in its own body and only an MMA-free loop inside
    sass = listing(
        "MOV R0, RZ",                                   # 0
        "HMMA.16816.F32 R8, R4, R6, R8",                # 1 outer body
        "NOP",                                          # 2 inner, no matrix
        "@P0 BRA @2",                                   # 3
        "@P1 BRA @1",                                   # 4
        "EXIT",                                         # 5
    )
    hot = hot_loop(parse(sass))
    assert (hot.start // 16, hot.end // 16, len(hot.body)) == (1, 4, 4)


def test_of_side_by_side_matrix_loops_the_smallest_is_the_main_one():
    # an unmasked loop and its masked copy (the same body plus the mask code), in either order
    unmasked = ["HGMMA.64x64x16.F32 R24, gdesc[UR8], R24", "@P0 BRA @{}"]
    masked = ["FSEL R24, R24, -INF, P3", "HGMMA.64x64x16.F32 R24, gdesc[UR8], R24", "@P1 BRA @{}"]
    sass = listing(unmasked[0], unmasked[1].format(0), masked[0], masked[1], masked[2].format(2), "EXIT")
    instructions = parse(sass)
    assert [(m.start // 16, m.end // 16) for m in matrix_loops(instructions)] == [(0, 1), (2, 4)]
    facts = loop_facts(sass)
    assert (facts.start, facts.end, facts.instructions, facts.loop_sizes, facts.matrix_loops) == (0, 16, 2, (2, 3), 2)
    # causal dK/dV runs its masked (diagonal) copy first
    sass = listing(masked[0], masked[1], masked[2].format(0), unmasked[0], unmasked[1].format(3), "EXIT")
    facts = loop_facts(sass)
    assert (facts.start // 16, facts.end // 16, facts.instructions, facts.loop_sizes) == (3, 4, 2, (3, 2))


def test_a_jump_back_from_an_out_of_line_block_past_exit_is_no_loop():
    # ptxas moves a barrier wait's retry past the end of the kernel: forward branch out, spin
    # there, then BRA back into the code. The jump back must not make a loop that spans EXIT.
    sass = listing(
        "@!P0 BRA @6",                                  # 0 wait not yet done: out of line
        "HGMMA.64x64x16.F32 R24, gdesc[UR8], R24",      # 1 loop body
        "@P1 BRA @0",                                   # 2 back branch of the real loop
        "EXIT",                                         # 3
        "BRA @4",                                       # 4 trap loop
        "NOP",                                          # 5
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR6], R5",  # 6 out-of-line retry
        "@!P0 BRA @6",                                  # 7
        "BRA @1",                                       # 8 back into the code, across EXIT
    )
    assert [(loop.start // 16, loop.end // 16) for loop in loops(parse(sass))] == [(0, 2), (4, 4), (6, 7)]
    facts = loop_facts(sass)
    assert (facts.start, facts.end, facts.instructions) == (0, 32, 3)


def test_nvdisasm_labels_resolve_like_addresses():
    sass = "\n".join([
        "        /*0000*/                   MOV R0, RZ ;",
        ".L_x_1:",
        "        /*0010*/                   HMMA.16816.F32 R8, R4, R6, R8 ;",
        "        /*0020*/              @!P0 BRA `(.L_x_1) ;",
        "        /*0030*/                   EXIT ;",
    ])
    facts = loop_facts(sass)
    assert (facts.start, facts.end, facts.instructions) == (16, 32, 2)


def test_no_matrix_loop_is_a_clear_error():
    straight = listing("MOV R0, RZ", "HMMA.16816.F32 R8, R4, R6, R8", "EXIT")
    with pytest.raises(NoMatrixLoop, match=r"no loop holds a matrix instruction \(HGMMA/HMMA\) among the 0 loops"):
        loop_facts(straight)
    fma_loop = listing("FFMA R1, R2, R3, R1", "@P0 BRA @0", "EXIT")
    with pytest.raises(NoMatrixLoop, match="among the 1 loops of 3 instructions"):
        loop_facts(fma_loop)


@pytest.mark.parametrize("opcode,kind", [
    ("HGMMA.64x64x16.F32", "matrix"), ("HMMA.16816.F32.BF16", "matrix"), ("UTMALDG.2D", "memory"),
    ("LDGSTS.E.BYPASS.LTC128B.128", "memory"), ("LDSM.16.M88.4", "memory"), ("SHFL.BFLY", "memory"),
    ("ULDC.64", "memory"), ("MUFU.EX2", "float"), ("F2FP.F16.F32.PACK_AB", "float"), ("FMNMX", "float"),
    ("UIADD3.64", "integer"), ("IMAD.MOV.U32", "integer"), ("R2UR", "integer"), ("LEA.HI.X", "integer"),
    ("SYNCS.ARRIVE.TRANS64", "control"), ("WARPGROUP.DEPBAR.LE", "control"), ("VOTEU.ANY", "control"),
    ("BAR.SYNC.DEFER_BLOCKING", "control"), ("NOP", "control"), ("FOO.BAR", "other")])
def test_instruction_classes(opcode, kind):
    assert instruction_class(opcode) == kind


def test_matrix_instruction_shapes_give_their_flops_per_warp():
    assert matrix_flops_per_warp("HMMA.16816.F32.BF16") == 2 * 16 * 8 * 16
    assert matrix_flops_per_warp("HMMA.1688.F32") == 2 * 16 * 8 * 8
    assert matrix_flops_per_warp("HGMMA.64x128x16.F32") == 2 * 64 * 128 * 16 // 4  # one warpgroup's 4 warps
    assert matrix_flops_per_warp("FFMA") == 0
    # 4 warps, each with two HMMA.16816 per iteration, for a 32x16x32 product: done once
    sass = listing("HMMA.16816.F32 R8, R4, R6, R8", "HMMA.16816.F32 R12, R4, R6, R12", "@P0 BRA @0", "EXIT")
    facts = loop_facts(sass)
    assert facts.matrix_flops == 2 * 4096 and facts.matrix_work(4, 2 * 32 * 16 * 32) == 1.0
    assert facts.matrix_work(8, 2 * 32 * 16 * 32) == 2.0  # 8 warps: each row block twice


def test_flop_model_of_one_loop_iteration():
    tags = {"d": "64", "block_m": "128", "block_n": "64", "grads": "both"}
    assert report_inner_loop.loop_flops("sdpa_forward", tags) == 2 * 128 * 64 * (64 + 64)
    assert report_inner_loop.loop_flops("sdpa_backward_dq", tags) == 2 * 128 * 64 * 3 * 64
    assert report_inner_loop.loop_flops("sdpa_backward_dkdv", tags) == 2 * 128 * 64 * 4 * 64
    assert report_inner_loop.loop_flops("sdpa_backward_dkdv", {**tags, "grads": "dv"}) == 2 * 128 * 64 * 2 * 64
    assert report_inner_loop.loop_flops("sdpa_backward_delta", tags) is None


def test_every_tutorial_figure_is_consistent():
    best, same_tile = report_inner_loop.TUTORIAL_FORWARD, report_inner_loop.TUTORIAL_FORWARD_AT_OUR_TILES
    # non-causal on both targets at both head dims; causal where its loop is like for like (sm_90)
    expected = {(t, d, False) for t in (80, 90) for d in (64, 128)} | {(90, d, True) for d in (64, 128)}
    assert set(best) == expected and {key[:3] for key in same_tile} == expected
    for key, tut in [*best.items(), *same_tile.items()]:
        target, d = key[:2]
        tags = report_inner_loop.config_tags(tut.config.lower())
        assert tut.warps == int(tags["warps"])
        assert tut.flops == 2 * int(tags["block_m"]) * int(tags["block_n"]) * 2 * d
        assert sum(tut.by_class.values()) == tut.instructions and set(tut.by_class) == set(CLASSES)
        assert tut.by_class["matrix"] > 0 and tut.by_class["other"] == 0
    for key, tut in same_tile.items():
        assert key[3:] == tuple(int(report_inner_loop.config_tags(tut.config.lower())[k])
                                for k in ("block_m", "block_n", "warps"))
    for tut in best.values():
        low, high = tut.space_per_kflop
        assert low == pytest.approx(tut.per_kflop, abs=1e-3) and low <= high


@pytest.fixture(scope="module")
def sm90_forward_rows():
    # one real build: the forward of a typical fp16 d=64 launch on sm_90 (TMA + wgmma)
    rows = report.compile_rows("triton", name="sdpa_forward",
                               config="dtype=fp16,d=64,block_m=128,block_n=64,mask=none,causal=False,launch=typical,",
                               jobs=1)
    return [r for r in rows if r.target == 90]


def test_the_sm90_sdpa_forward_main_loop_is_its_wgmma_loop(sm90_forward_rows):
    (row,) = sm90_forward_rows
    assert row.compiled and row.matrix == "wgmma", row.problems()
    loop = row.inner_loop
    # the two products over d=64 in k-steps of 16: 4 HGMMA each, per warp
    assert loop.by_class["matrix"] == 8 and loop.instructions == sum(loop.by_class.values())
    # the unmasked loop (the main one) and the masked tail loop, which adds the mask code
    assert loop.by_class["float"] > 0 and loop.matrix_loops == 2
    assert loop.loop_sizes[0] == loop.instructions < loop.loop_sizes[1]
    (record,) = report_inner_loop.inner_loop_records([row])
    assert record["model_loop_flops"] == 2 * 128 * 64 * 128
    assert record["derived_matrix_work"] == 1.0  # two warpgroups, 64 rows each: no product done twice
    assert record["derived_instructions_per_kflop"] == pytest.approx(
        1000 * loop.instructions * 8 / record["model_loop_flops"], abs=1e-3)
    # the tutorial beside it: at our tiles (128x64, 8 warps) and at its own best config
    assert record["tutorial_same_tile_config"] == "BLOCK_M=128,BLOCK_N=64,stages=3,warps=8"
    assert record["tutorial_same_tile_loop_matrix"] == 8
    assert 0 < record["tutorial_best_instructions_per_kflop"] <= record["tutorial_same_tile_instructions_per_kflop"]
    text = report.format_report([], [], loop_records=[record])
    assert "INNER LOOP" in text and "sdpa_forward" in text
