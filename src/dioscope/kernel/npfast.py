"""Reductions over small numpy arrays without numpy's Python-level dispatch.

``a.any()``, ``a.all()``, ``a.min()`` and ``a.max()`` go through ``numpy._core._methods``
and cost 0.6–0.8 µs even for a few entries; ``argmin``/``argmax`` are plain C methods
(0.13 µs). The Direct I/O hot path makes dozens of such tests per syscall, so these helpers
give the same answers by indexing with ``argmin``/``argmax``. Measured with numpy 2.4 on
this machine (256 entries): ``b.all()`` 680 ns, :func:`all_set` 150 ns.

:func:`any_set` and :func:`all_set` take bool arrays or arrays of non-negative integers (the
flag words and masks they are used on): with a negative entry, the extreme element is not the
one that decides.
"""

from __future__ import annotations

import numpy as np

__all__ = ["all_set", "amax", "amin", "any_set"]


def any_set(a: np.ndarray) -> bool:
    """``a.any()`` of a bool or non-negative array: some entry is nonzero (False if empty)."""
    return len(a) > 0 and bool(a.item(a.argmax()))


def all_set(a: np.ndarray) -> bool:
    """``a.all()`` of a bool or non-negative array: no entry is zero (True if empty)."""
    return not len(a) or bool(a.item(a.argmin()))


def amin(a: np.ndarray) -> int:
    """``int(a.min())`` of a non-empty integer array."""
    return int(a.item(a.argmin()))


def amax(a: np.ndarray) -> int:
    """``int(a.max())`` of a non-empty integer array."""
    return int(a.item(a.argmax()))
