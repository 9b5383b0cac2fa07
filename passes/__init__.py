"""The default pipeline: every pass bnnc runs, in order, with why it stands where it does."""

from __future__ import annotations

from bnnc.pipeline import Pass


def default_pipeline() -> list[Pass]:
    """A fresh instance of every pass of the default pipeline, in order."""
    return [cls() for cls in PIPELINE]


PIPELINE: list[type[Pass]] = [
]
