"""How the reference computes: float16 in float32 (NumPy's float16 arithmetic rounds at every
step), everything else in its own dtype; and silently for non-finite values, as PyTorch does."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np


def reference_op(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Run ``fn`` on float16 arrays in float32 and round its result(s) to float16 once; silence
    NumPy's overflow/invalid warnings (NaN and inf inputs give the values PyTorch gives)."""

    @functools.wraps(fn)
    def wrapper(*args, **params):
        dtype = args[0].dtype
        with np.errstate(all="ignore"):
            if dtype != np.float16:
                return fn(*args, **params)
            result = fn(*(a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args), **params)
        if isinstance(result, tuple):
            return tuple(r.astype(dtype) for r in result)
        return result.astype(dtype)

    return wrapper
