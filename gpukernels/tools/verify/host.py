"""Build the ``__host__ __device__`` CUDA headers of ``gpukernels.cupy`` with g++ into a
shared library, so CPU tests run the very per-element code the GPU kernels run."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gpukernels.cupy._module import SOURCE_DIR

GXX_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wall", "-Werror")


def build(shim: Path) -> ctypes.CDLL:
    """Compile ``shim`` (a .cpp that includes headers from gpukernels/cupy) and load it.

    The library is cached by the hash of the shim and every header, so a change rebuilds it.
    """
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if compiler is None:
        raise FileNotFoundError("no C++ compiler: install g++ (or set CXX)")
    digest = hashlib.sha256(shim.read_bytes())
    for header in sorted(SOURCE_DIR.glob("*.cuh")):
        digest.update(header.read_bytes())
    out_dir = Path(tempfile.gettempdir()) / "gpukernels-host"
    out_dir.mkdir(exist_ok=True)
    library = out_dir / f"{shim.stem}-{digest.hexdigest()[:16]}.so"
    if not library.exists():
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler, *GXX_FLAGS, f"-I{SOURCE_DIR}", str(shim), "-o", str(partial)],
                       check=True, capture_output=True, text=True)
        partial.replace(library)  # atomic, so parallel test workers never load half a file
    return ctypes.CDLL(str(library))
