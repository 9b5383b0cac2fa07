"""Sessions run their kernels step by step unless a test asks for the emitted plan function
(``InferenceSession(..., plan="emitted")``): the suite builds hundreds of one-off graphs, and each
emitted plan is compiled once per distinct model; the tests of the emitted code ask for it.

Hypothesis profiles. `make test` uses "default": a fixed, derandomized budget so the suite is
reproducible and takes seconds; `make fuzz` sets BNNC_FUZZ=1, which selects "fuzz": many more
examples, a fresh random seed every run."""

import os

os.environ.setdefault("BNNC_PLAN", "steps")

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("default", derandomize=True, **_COMMON)
settings.register_profile("fuzz", derandomize=False, **_COMMON)
settings.load_profile("fuzz" if os.environ.get("BNNC_FUZZ") else "default")


def budget(test: int, fuzz: int) -> int:
    """Examples for one property: ``test`` in `make test`, ``fuzz`` in `make fuzz` (or the count
    in BNNC_FUZZ when it is a number larger than 1)."""
    value = os.environ.get("BNNC_FUZZ", "")
    if not value:
        return test
    return int(value) if value.isdigit() and int(value) > 1 else fuzz
