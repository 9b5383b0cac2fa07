"""Where a mutator's random choices come from: hypothesis (tests, with shrinking) or a seeded
numpy generator (the campaign, where case number N always makes the same input)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Source:
    """The few kinds of choices a mutator makes."""

    def integer(self, lo: int, hi: int) -> int:  # inclusive bounds
        raise NotImplementedError

    def blob(self, n: int) -> bytes:
        raise NotImplementedError

    def choice(self, items: Sequence[Any]) -> Any:
        return items[self.integer(0, len(items) - 1)]

    def coin(self, p_num: int = 1, p_den: int = 2) -> bool:
        return self.integer(1, p_den) <= p_num


class RandomSource(Source):
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def integer(self, lo: int, hi: int) -> int:
        if hi - lo < 2**62:
            return int(self.rng.integers(lo, hi, endpoint=True))
        return lo + int.from_bytes(self.rng.bytes(16), "little") % (hi - lo + 1)

    def blob(self, n: int) -> bytes:
        return self.rng.bytes(n)


class HypothesisSource(Source):
    def __init__(self, data):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return self.data.draw(st.integers(lo, hi))

    def blob(self, n: int) -> bytes:
        from hypothesis import strategies as st

        return self.data.draw(st.binary(min_size=n, max_size=n))
