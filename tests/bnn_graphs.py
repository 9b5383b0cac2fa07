"""Builders of small BNN graphs for the tests: the project's own graph builder (bnnc.builder)."""

from bnnc.builder import GraphBuilder as Builder

__all__ = ["Builder"]
