"""Facts the binary passes learn, kept on the nodes and values they describe.

``LayerFacts`` (``node.meta["bnnc.layer"]``): one per convolution or linear layer of the source
model: its ONNX node name, op, mode (``xnor``, ``binary-weight``, ``ternary`` or ``float``), the
reason a float layer stays float, MACs, weight bytes before (fp32) and after packing, the largest
relative deviation of its weights from ±alpha, and, once thresholds are folded, what it writes.
A pass that replaces a layer node hands its facts to the new node (``carry``).

``BitsFacts`` (``value.meta["bnnc.bits"]``): a packed tensor holds sign_z(source) of the input
model; ``bnnc verify`` compares it with onnxruntime's sign of the same tensor. Its nonzero mask,
when it has one, is the next output of the node that writes it (docs/binary_ops.md).

Only the lowering turns them into the manifest's ``bnnc.layers`` / ``bnnc.bit_tensors``
(``bnnc inspect`` and ``bnnc verify`` read them there).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import onnx_ir as ir

LAYER = "bnnc.layer"
BITS = "bnnc.bits"
LAYERS_KEY = "bnnc.layers"
BITS_KEY = "bnnc.bit_tensors"
MODES = ("xnor", "binary-weight", "ternary", "float")


@dataclasses.dataclass
class LayerFacts:
    name: str
    op: str
    macs: int
    weight_bytes: int
    weight_deviation: float | None = None
    mode: str = "float"
    reason: str = ""
    packed_weight_bytes: int = 0
    output: str | None = None  # "bits" once a threshold is folded in
    out_mask: int | None = None
    order: int = 0  # the layer's position among the source model's layers

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if (v is not None or k == "weight_deviation") and k != "order"}


@dataclasses.dataclass
class BitsFacts:
    source: str  # the input model's tensor whose sign these bits are
    zero: int  # the binarizer's value at 0
    channels: int
    readers: list[str]  # the layers that read the bits


def set_layer(node: ir.Node, facts: LayerFacts) -> None:
    assert facts.mode in MODES, facts
    node.meta[LAYER] = facts


def layer_of(node: ir.Node) -> LayerFacts | None:
    return node.meta.get(LAYER)


def carry(old: ir.Node, new: ir.Node) -> None:
    """``new`` replaces layer node ``old``: it takes over its facts."""
    if LAYER in old.meta and LAYER not in new.meta:
        new.meta[LAYER] = old.meta[LAYER]


def record_bits(bits: ir.Value, source: str, zero: int, channels: int, reader: str) -> None:
    """Remember that packed tensor ``bits`` holds sign_z(``source``) and that ``reader`` reads it."""
    facts = bits.meta.get(BITS)
    if facts is None:
        facts = bits.meta[BITS] = BitsFacts(source, zero, channels, [])
    facts.readers.append(reader)


def manifest_metadata(graph: ir.Graph) -> dict[str, str]:
    """The layer table and the bit-tensor table as the manifest stores them (JSON strings)."""
    facts = sorted((layer_of(n) for n in graph if layer_of(n) is not None), key=lambda f: f.order)
    layers = [f.to_json() for f in facts]
    table = {}
    for v in (v for n in graph for v in n.outputs):
        facts: BitsFacts | None = v.meta.get(BITS)
        if facts is None:
            continue
        outs = v.producer().outputs
        mask = outs[v.index() + 1].name or "" if len(outs) > v.index() + 1 else ""
        table[v.name] = {"source": facts.source, "zero": facts.zero, "channels": facts.channels,
                         "mask": mask, "readers": list(facts.readers)}
    return {LAYERS_KEY: json.dumps(layers), BITS_KEY: json.dumps(dict(sorted(table.items())))}


def bit_tensors(metadata: dict) -> dict[str, dict[str, Any]]:
    return json.loads(metadata.get(BITS_KEY, "{}"))


def get_layers(metadata: dict) -> list[dict[str, Any]]:
    return json.loads(metadata.get(LAYERS_KEY, "[]"))
