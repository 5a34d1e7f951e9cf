"""Buffers for the g++ builds of the CUDA headers: storage-typed numpy arrays (bfloat16 as raw
bits), placed aligned or deliberately misaligned, NaN-poisoned outputs, and raw pointers."""

from __future__ import annotations

import ctypes

import numpy as np
import torch

DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}  # the shims' storage-type switch


def storage(values: np.ndarray, dtype: str, misalign: bool) -> tuple[np.ndarray, np.ndarray]:
    """(buffer of the storage type, the exact values it holds as float64). With ``misalign``
    the buffer starts one element past a 16-byte boundary, so the 128-bit paths are skipped."""
    rounded = torch.from_numpy(values).to(getattr(torch, dtype))
    raw = rounded.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else rounded.numpy()
    backing = np.empty(raw.size + 16, dtype=raw.dtype)
    start = (-backing.ctypes.data % 16) // raw.itemsize + (1 if misalign else 0)
    buffer = backing[start:start + raw.size].reshape(raw.shape)
    buffer[...] = raw
    return buffer, rounded.double().numpy()


def poisoned_like(buffer: np.ndarray) -> np.ndarray:
    out = np.empty_like(buffer)
    out.view(np.uint8)[...] = 0xFF  # all-ones bits: NaN in every float format
    return out


def decode(buffer: np.ndarray, dtype: str) -> np.ndarray:
    """The values a storage buffer holds, as float64."""
    if dtype == "bfloat16":
        return torch.from_numpy(buffer.view(np.int16).copy()).view(torch.bfloat16).double().numpy()
    return buffer.astype(np.float64)


def ptr(a: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if a is None else a.ctypes.data)
