"""Builders of small BNN graphs for the tests: the project's own graph builder (bnnc.builder),
the graph a pass sees in the default pipeline, and inputs with exact zeros."""

import numpy as np

from bnnc.builder import GraphBuilder as Builder
from tests.helpers import load_graph

__all__ = ["Builder", "before_pass", "zero_row_input"]


def before_pass(model, pass_cls):
    """The graph as the default pipeline leaves it just before ``pass_cls``."""
    from bnnc.pipeline import run_pipeline
    from passes import PIPELINE

    graph = load_graph(model)
    run_pipeline(graph, [cls() for cls in PIPELINE[:PIPELINE.index(pass_cls)]])
    return graph


def zero_row_input(shape, seed=0) -> np.ndarray:
    """Seeded normal input whose first sample has an all-zero row: Sign(0) = 0 there."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[0, :, 0, :] = 0.0
    return x
