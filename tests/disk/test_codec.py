"""Sector codecs: the hole mask is exactly "all 4096 bytes are zero"."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vmcrypt.disk.codec import SECTOR, holes

# Per sector: random bytes, all zero, zero but for the first 8 bytes being zero only, or
# zero but one byte anywhere (the cases the first-word prefilter must not get wrong).
_KINDS = st.sampled_from(["random", "zero", "zero-head", "one-byte"])


@given(kinds=st.lists(st.tuples(_KINDS, st.integers(0, SECTOR - 1)), min_size=1, max_size=24),
       seed=st.integers(0, 2**32 - 1))
def test_holes_are_exactly_the_all_zero_sectors(kinds: list[tuple[str, int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    stored = rng.integers(1, 256, len(kinds) * SECTOR, dtype=np.uint8)
    sectors = stored.reshape(-1, SECTOR)
    for i, (kind, where) in enumerate(kinds):
        if kind == "zero":
            sectors[i] = 0
        elif kind == "zero-head":
            sectors[i, :8] = 0
        elif kind == "one-byte":
            sectors[i] = 0
            sectors[i, where] = 1
    expected = [kind == "zero" for kind, _ in kinds]
    assert holes(stored).tolist() == expected
