"""numpy's median and percentile to the last bit, without the numpy.ma check inside numpy's own.

np.median and np.percentile look at `np.ma` on every call, and numpy 2 imports numpy.ma on that
first look: 10 ms and 1 MB of every cold `stripread read`, which never sees a masked array. These
take the same order statistics (np.partition) and combine them the same way (np.mean; numpy's
linear interpolation), for the read path's non-empty floating-point and integer arrays.
"""
from __future__ import annotations

import numpy as np


def median(values, axis: int | None = None):
    """np.median(values, axis): NaN where a NaN was among the values, as numpy gives it."""
    a = np.asarray(values)
    if axis is None:
        a, axis = a.ravel(), 0
    n = a.shape[axis]
    if n == 0:      # numpy gives NaN (with a warning) for an empty selection
        empty = np.full(np.delete(a.shape, axis), np.nan)
        return empty if empty.ndim else float("nan")
    kth = [n // 2 - 1, n // 2] if n % 2 == 0 else [(n - 1) // 2]
    inexact = np.issubdtype(a.dtype, np.inexact)
    part = np.partition(a, kth + [-1] if inexact else kth, axis=axis)
    middle = [slice(None)] * part.ndim
    middle[axis] = slice(n // 2, n // 2 + 1) if n % 2 else slice(n // 2 - 1, n // 2 + 1)
    result = np.mean(part[tuple(middle)], axis=axis)
    if inexact:
        last = np.take(part, -1, axis=axis)       # a NaN sorts last
        nan = np.isnan(last)
        if nan.any():
            if isinstance(result, np.generic):
                return last
            np.copyto(result, last, where=nan)
    return result


def percentile(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) over all values (its default, linear interpolation), for values
    without NaN."""
    flat = np.asarray(values).ravel()
    at = (flat.size - 1) * (q / 100)
    lo = int(at)
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))
    a, b, t = float(part[lo]), float(part[hi]), at - lo
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
