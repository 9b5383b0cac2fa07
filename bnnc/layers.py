"""The per-layer table the binary passes keep in the model metadata (``bnnc.layers``).

One record per convolution or linear layer of the source model: its ONNX node name, op, mode
(``xnor``, ``binary-weight``, ``ternary`` or ``float``), the reason a float layer stays float,
MACs, weight bytes before (fp32) and after packing, and the largest relative deviation of its
weights from ±alpha. ``bnnc inspect`` prints it; it travels inside the artifact's manifest.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bnnc.graph import Graph

KEY = "bnnc.layers"
MODES = ("xnor", "binary-weight", "ternary", "float")


def get_layers(graph: Graph) -> list[dict[str, Any]]:
    return json.loads(graph.metadata.get(KEY, "[]"))


def set_layer(graph: Graph, record: dict[str, Any]) -> None:
    """Add or replace the record of layer ``record['name']``."""
    assert record.get("mode") in MODES, record
    layers = [r for r in get_layers(graph) if r["name"] != record["name"]]
    layers.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in record.items()})
    graph.metadata[KEY] = json.dumps(layers)


def update_layer(graph: Graph, name: str, **fields: Any) -> None:
    layers = get_layers(graph)
    for r in layers:
        if r["name"] == name:
            r.update(fields)
    graph.metadata[KEY] = json.dumps(layers)


BITS_KEY = "bnnc.bit_tensors"


def record_bits(graph: Graph, bits: str, source: str, zero: int, channels: int, mask: str, reader: str) -> None:
    """Remember that packed tensor ``bits`` holds sign_z(``source``) of the input model, for verify."""
    table = json.loads(graph.metadata.get(BITS_KEY, "{}"))
    entry = table.setdefault(bits, {"source": source, "zero": zero, "channels": channels, "mask": mask, "readers": []})
    entry["readers"].append(reader)
    graph.metadata[BITS_KEY] = json.dumps(table)


def bit_tensors(metadata: dict) -> dict[str, dict[str, Any]]:
    return json.loads(metadata.get(BITS_KEY, "{}"))
