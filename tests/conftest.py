"""Suite-wide: which model runs (compiled hot path or pure Python), and the ``pure`` marker.

A test marked ``pure`` replaces a model function to watch or steer the calls made to it.
Inside the compiled hot path (``.native/``, see ``dioscope._native``) those calls are direct
C calls that never look the name up again, so such a test would watch nothing; it is skipped
there and runs in ``make test``'s pure pass (``DIOSCOPE_PURE=1``).
"""

from __future__ import annotations

import pytest

from dioscope import _native


def pytest_report_header(config: pytest.Config) -> str:
    if _native.ACTIVE:
        return f"dioscope model: compiled hot path ({len(_native.MODULES)} modules, mypyc)"
    return f"dioscope model: pure Python ({_native.REASON})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _native.ACTIVE:
        return
    skip = pytest.mark.skip(reason="replaces a function the compiled hot path calls directly; "
                                   "runs with DIOSCOPE_PURE=1 (make test's pure pass)")
    for item in items:
        if item.get_closest_marker("pure") is not None:
            item.add_marker(skip)
