"""How the compile gate finds NVRTC (gpukernels.tools.verify.nvrtc), on fake directory trees: the
CUDA 12 pip layout (nvidia/cuda_nvrtc/lib/libnvrtc.so.12), the CUDA 13 one
(nvidia/cu13/lib/libnvrtc.so.13) and a toolkit's lib directory, always the major version the
installed CuPy was built for, and a message naming the extra to install when it is missing."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from gpukernels.tools.verify import nvrtc


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def trees(tmp_path):
    cu12 = tmp_path / "venv12" / "site-packages"
    cu13 = tmp_path / "venv13" / "site-packages"
    toolkit = tmp_path / "cuda-13.0" / "targets" / "x86_64-linux" / "lib"
    return {
        "cu12": (cu12, _touch(cu12 / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so.12")),
        "cu13": (cu13, _touch(cu13 / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13")),
        "toolkit": (toolkit, _touch(toolkit / "libnvrtc.so.13")),
        "empty": (_touch(tmp_path / "other" / "site-packages" / "x.py").parent, None),
    }


def test_each_pip_layout_is_found_for_its_major_version(trees):
    (cu12, lib12), (cu13, lib13), (empty, _) = trees["cu12"], trees["cu13"], trees["empty"]
    assert nvrtc.find_nvrtc(12, [empty, cu13, cu12]) == lib12
    assert nvrtc.find_nvrtc(13, [empty, cu12, cu13]) == lib13
    assert nvrtc.find_nvrtc(13, [cu12]) is None  # never the other major: CuPy could not load it
    assert nvrtc.find_nvrtc(12, [cu13]) is None


def test_a_toolkit_lib_directory_and_the_search_order(trees):
    (toolkit, in_toolkit), (cu13, in_wheel) = trees["toolkit"], trees["cu13"]
    assert nvrtc.find_nvrtc(13, [toolkit]) == in_toolkit
    assert nvrtc.find_nvrtc(13, [cu13, toolkit]) == in_wheel
    assert nvrtc.find_nvrtc(13, [toolkit, cu13]) == in_toolkit


def test_search_dirs_cover_sys_path_and_the_toolkit_variables(trees, monkeypatch, tmp_path):
    (cu13, lib13), (toolkit, _) = trees["cu13"], trees["toolkit"]
    monkeypatch.setattr("sys.path", [str(cu13), str(tmp_path / "missing")])
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "cuda-13.0"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    dirs = nvrtc.search_dirs()
    assert dirs[0] == cu13 and tmp_path / "missing" not in dirs
    assert toolkit in dirs and Path("/usr/local/cuda/lib64") in dirs
    assert nvrtc.find_nvrtc(13, dirs) == lib13


@pytest.mark.parametrize("installed,major", [("cupy-cuda12x", 12), ("cupy-cuda13x", 13)])
def test_cupys_cuda_version_comes_from_its_wheel(monkeypatch, installed, major):
    def version(name):
        if name != installed:
            raise metadata.PackageNotFoundError(name)
        return "14.2.0"

    monkeypatch.setattr(nvrtc.metadata, "version", version)
    assert nvrtc.cupy_cuda_major() == major


def test_missing_nvrtc_names_the_extra_to_install(trees, monkeypatch):
    cu12, _ = trees["cu12"]
    monkeypatch.setattr(nvrtc, "cupy_cuda_major", lambda: 13)
    monkeypatch.setattr(nvrtc, "search_dirs", lambda: [cu12])
    nvrtc.load_nvrtc.cache_clear()
    try:
        with pytest.raises(nvrtc.NvrtcNotFoundError, match=r"CUDA 13.*gpukernels\[cupy13\]"):
            nvrtc.load_nvrtc()
    finally:
        nvrtc.load_nvrtc.cache_clear()
    assert "gpukernels[cupy]'" in nvrtc.nvrtc_missing_message(12, [cu12])


def test_this_environment_has_cupys_nvrtc():
    pytest.importorskip("cupy")
    found = nvrtc.load_nvrtc()
    assert found.name == f"libnvrtc.so.{nvrtc.cupy_cuda_major()}"
