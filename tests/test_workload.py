"""The demo workload runs clean under every profile: every byte checked, every error the
expected one, pins balanced, the sanitizer quiet; and the profiles differ as the series says
(5.9 pins nothing, 5.9-pin and 6.18 pin what Direct I/O touches)."""

from __future__ import annotations

import pytest

from dioscope.workload import run_workload


@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
def test_workload_is_clean(profile: str) -> None:
    st = run_workload(profile, size=8 << 20, ops=80, seed=3, device="mem")
    assert st.unexpected == []
    assert st.data_errors == 0
    assert st.sanitizer == "clean"
    assert st.pins_acquired == st.pins_released
    assert st.syscalls >= 80 and st.bytes_read > 0 and st.bytes_written > 0
    assert st.requests > 0 and st.bios > 0
    if profile == "5.9":
        assert st.pins_acquired == 0 and st.pages_maybe_pinned == 0
    else:
        assert st.pins_acquired > 0
        assert 0 < st.pages_maybe_pinned <= st.pages_in_flight


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError):
        run_workload("6.18", size=5 << 20, ops=1, device="mem")
