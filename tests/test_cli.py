from __future__ import annotations

from gpukernels.tools import cli


def test_info_lists_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("numpy", "torch", "triton", "cupy", "backends:", "GPU:"):
        assert word in out


def test_check_with_a_filter_that_matches_nothing(capsys):
    assert cli.main(["check", "--filter", "no-such-kernel"]) == 2
    assert "no kernel matches" in capsys.readouterr().err
