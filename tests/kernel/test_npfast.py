"""The argmin/argmax reductions give numpy's own answers (empty arrays included)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dioscope.kernel.npfast import all_set, amax, amin, any_set


@pytest.mark.parametrize("a", [
    np.array([], bool), np.array([True]), np.array([False]), np.array([False, True]),
    np.array([True, False, True]), np.array([], np.uint32), np.array([0, 0, 8], np.uint32),
    np.array([0, 0], np.int64),
])
def test_any_all_match_numpy(a: np.ndarray) -> None:
    assert any_set(a) == bool(a.any())
    assert all_set(a) == bool(a.all())


@given(hnp.arrays(st.sampled_from([np.uint8, np.uint32, np.uint64, np.bool_]),
                  st.integers(0, 40)))
def test_any_all_of_flag_words_match_numpy(a: np.ndarray) -> None:
    assert any_set(a) == bool(a.any()) and all_set(a) == bool(a.all())


@given(hnp.arrays(st.sampled_from([np.int32, np.int64, np.uint8, np.uint32]),
                  st.integers(1, 40)))
def test_min_max_match_numpy(a: np.ndarray) -> None:
    assert amin(a) == int(a.min()) and amax(a) == int(a.max())
