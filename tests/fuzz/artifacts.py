"""Mutations of a valid artifact, and the oracle every mutant must satisfy.

Two families. Raw mutations change bytes (flips, truncation, header fields, random files) and
keep the file's own checksums, so they test the header checks and the checksums. Resealed
mutations change the manifest (its JSON text or its parsed structure: absurd shapes, negative or
overlapping offsets, wrong dtypes, dangling names, deep nesting) or a tensor's bytes and then
recompute the checksums, as a deliberate forger would: they test runtime.validate and the session.

The oracle: loading the mutant (and, when it loads, building a session and running it once on a
finite input) ends in a BnncError or succeeds; any other exception is a bug.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable

import numpy as np

from runtime.artifact import _HEADER, FORMAT_VERSION
from tests.fuzz.source import Source

ABSURD_INTS = [-1, -(2**63), 0, 1, 3, 2**31, 2**32 + 1, 10**12, 2**63 - 1, 2**64, 10**30]
NASTY = [None, True, False, -1, 0, 10**12, 2**64, 1.5, -0.0, float("inf"), "", "x", "object",
         "float128", "<f4", [], [1], [-1], [10**12, 10**12], {}, {"a": 1}, [[[]]]]
DTYPE_NAMES = ["object", "float128", "complex64", "<f4", ">f4", "str", "V8", "int4", "bfloat16", "float32",
               "uint64", "bool", "float16", "int16", 7, None, ["float32"]]


def split(raw: bytes) -> tuple[dict, bytes]:
    """(parsed manifest, data section) of a valid artifact."""
    mlen = struct.unpack_from("<Q", raw, 16)[0]
    end = _HEADER.size + mlen
    return json.loads(raw[_HEADER.size:end]), raw[end + (-end) % 64:]


def seal(text: bytes, data: bytes, version: int = FORMAT_VERSION) -> bytes:
    """An artifact whose header and manifest checksum are right for ``text``, whatever it holds."""
    head = _HEADER.pack(b"BNNCART\0", version, 0, len(text), hashlib.sha256(text).digest()) + text
    return head + b"\0" * ((-len(head)) % 64) + data


def reseal(manifest: dict, data: bytes) -> bytes:
    return seal(json.dumps(manifest, separators=(",", ":")).encode(), data)


# -- raw mutations ------------------------------------------------------------------------------
def truncate(src: Source, raw: bytes) -> bytes:
    return raw[:src.integer(0, len(raw) - 1)]


def flip_bits(src: Source, raw: bytes) -> bytes:
    b = bytearray(raw)
    mlen = struct.unpack_from("<Q", raw, 16)[0]
    regions = [(0, _HEADER.size), (_HEADER.size, _HEADER.size + mlen), (0, len(raw))]
    lo, hi = src.choice(regions)
    for _ in range(src.integer(1, 8)):
        i = src.integer(lo, hi - 1)
        b[i] ^= 1 << src.integer(0, 7)
    return bytes(b)


def overwrite(src: Source, raw: bytes) -> bytes:
    i = src.integer(0, len(raw) - 1)
    n = src.integer(1, 64)
    return raw[:i] + src.blob(n) + raw[i + n:]


def insert_or_delete(src: Source, raw: bytes) -> bytes:
    i = src.integer(0, len(raw) - 1)
    if src.coin():
        return raw[:i] + src.blob(src.integer(1, 16)) + raw[i:]
    return raw[:i] + raw[i + src.integer(1, 16):]


def header_field(src: Source, raw: bytes) -> bytes:
    b = bytearray(raw)
    field = src.choice(["version", "reserved", "mlen", "magic"])
    if field == "version":
        struct.pack_into("<I", b, 8, src.choice([0, 1, 3, 2**32 - 1, src.integer(0, 2**32 - 1)]))
    elif field == "reserved":
        struct.pack_into("<I", b, 12, src.integer(0, 2**32 - 1))
    elif field == "mlen":
        struct.pack_into("<Q", b, 16, src.choice([0, 1, 10**12, 2**64 - 1, src.integer(0, len(raw) * 2)]))
    else:
        b[src.integer(0, 7)] = src.integer(0, 255)
    return bytes(b)


def random_file(src: Source, raw: bytes) -> bytes:
    body = src.blob(src.integer(0, 200))
    return (b"BNNCART\0" + struct.pack("<I", FORMAT_VERSION) + body) if src.coin() else body


# -- resealed mutations -------------------------------------------------------------------------
def text_bytes(src: Source, raw: bytes) -> bytes:
    """Flip bytes of the manifest's JSON text, then fix its checksum."""
    mlen = struct.unpack_from("<Q", raw, 16)[0]
    text = bytearray(raw[_HEADER.size:_HEADER.size + mlen])
    for _ in range(src.integer(1, 4)):
        text[src.integer(0, len(text) - 1)] = src.choice([src.integer(0, 255), ord("["), ord("{"), ord('"'), ord("9")])
    return seal(bytes(text), split(raw)[1])


def _nodes(obj, path=()):
    """Every (path, value) in a parsed JSON tree."""
    out, stack = [], [(path, obj)]
    while stack:
        p, o = stack.pop()
        out.append((p, o))
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        stack.extend((p + (k,), v) for k, v in items)
    return out


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _nested(depth: int):
    return json.loads("[" * depth + "]" * depth) if depth < 500 else None


def replace_node(src: Source, raw: bytes) -> bytes:
    """Replace any value of the manifest by a nasty one, or delete a key."""
    manifest, data = split(raw)
    path, old = src.choice([n for n in _nodes(manifest) if n[0]])
    if src.coin(1, 4):
        parent = manifest
        for k in path[:-1]:
            parent = parent[k]
        del parent[path[-1]]
    elif isinstance(old, int) and not isinstance(old, bool) and src.coin():
        _set(manifest, path, src.choice(ABSURD_INTS + [old + src.integer(-3, 3)]))
    else:
        _set(manifest, path, src.choice(NASTY + [_nested(src.integer(1, 40))]))
    return reseal(manifest, data)


def deep_json(src: Source, raw: bytes) -> bytes:
    """A manifest nested thousands deep, whole or in one field, built as text (json.dumps recurses)."""
    depth = src.choice([33, 100, 1000, 10**4, 10**5, src.integer(1, 3000)])
    deep = ("[" if src.coin() else '{"a":') * depth
    closing = "]" * depth if deep.startswith("[") else "}" * depth
    if src.coin():
        return seal((deep + closing).encode(), b"")
    mlen = struct.unpack_from("<Q", raw, 16)[0]
    text = raw[_HEADER.size:_HEADER.size + mlen].decode()
    text = text.replace('"attrs":{', '"attrs":{"deep":' + deep + "0" + closing + ",", 1)
    return seal(text.encode(), split(raw)[1])


def tensor_entry(src: Source, raw: bytes) -> bytes:
    """Absurd shapes (with nbytes to match), negative, misaligned or overlapping offsets, dtypes."""
    manifest, data = split(raw)
    tensors = manifest["tensors"]
    name = src.choice(sorted(tensors))
    t = tensors[name]
    kind = src.choice(["shape", "offset", "overlap", "dtype", "nbytes", "sha"])
    if kind == "shape":
        t["shape"] = src.choice([[10**12], [10**6, 10**6], [2**32, 2**32, 4], [-1, 4], [2**63], [0], []])
        t["nbytes"] = max(0, int(np.prod(t["shape"], dtype=object))) * 4 if src.coin() else t["nbytes"]
    elif kind == "offset":
        t["offset"] = src.choice([-64, -1, 1, 63, len(data), len(data) + 64, 10**12, 2**64, src.integer(-10**6, 10**6)])
    elif kind == "overlap":
        t["offset"] = tensors[src.choice(sorted(tensors))]["offset"] + src.choice([0, 64])
    elif kind == "dtype":
        t["dtype"] = src.choice(DTYPE_NAMES)
    elif kind == "nbytes":
        t["nbytes"] = src.choice(ABSURD_INTS)
    else:
        t["sha256"] = src.choice(["", "0" * 64, "g" * 64, t["sha256"].upper(), 5])
    return reseal(manifest, data)


def value_entry(src: Source, raw: bytes) -> bytes:
    """A value's shape or dtype made absurd or subtly wrong."""
    manifest, data = split(raw)
    values = manifest["values"]
    v = values[src.choice(sorted(values))]
    if src.coin():
        v["shape"] = src.choice([[10**12], [2**31, 2**31], [-1] + v["shape"][1:], v["shape"] + [2],
                                 v["shape"][:-1], [d + src.integer(1, 3) for d in v["shape"]], [0] * len(v["shape"])])
    else:
        v["dtype"] = src.choice(DTYPE_NAMES)
    return reseal(manifest, data)


def plan_edit(src: Source, raw: bytes) -> bytes:
    """Dangling, later or duplicated names; steps swapped, repeated or dropped; bad step fields."""
    manifest, data = split(raw)
    plan = manifest["plan"]
    i = src.integer(0, len(plan) - 1)
    step = plan[i]
    names = sorted(manifest["values"]) + sorted(manifest["tensors"]) + ["", "nowhere"]
    kind = src.choice(["input", "output", "swap", "repeat", "drop", "op", "field", "io"])
    if kind == "input" and step["inputs"]:
        step["inputs"][src.integer(0, len(step["inputs"]) - 1)] = src.choice(names)
    elif kind == "output" and step["outputs"]:
        step["outputs"][src.integer(0, len(step["outputs"]) - 1)] = src.choice(names)
    elif kind == "swap":
        j = src.integer(0, len(plan) - 1)
        plan[i], plan[j] = plan[j], plan[i]
    elif kind == "repeat":
        plan.insert(src.integer(0, len(plan)), step)
    elif kind == "drop":
        del plan[i]
    elif kind == "op":
        step["op"] = src.choice([plan[src.integer(0, len(plan) - 1)]["op"], "Nope", "", 3, "__import__"])
    elif kind == "field":
        step[src.choice(["inputs", "outputs", "attrs", "name"])] = src.choice(NASTY)
    else:
        io = manifest[src.choice(["inputs", "outputs"])]
        io[src.integer(0, len(io) - 1)][src.choice(["name", "shape", "dtype"])] = src.choice(NASTY + names)
        manifest["dynamic_batch"] = src.choice([True, False, 1, None])
    return reseal(manifest, data)


def attr_edit(src: Source, raw: bytes) -> bytes:
    """A kernel attribute made absurd: the kernels must refuse what they cannot honour."""
    manifest, data = split(raw)
    steps = [s for s in manifest["plan"] if s["attrs"]]
    if not steps:
        return reseal(manifest, data)
    attrs = src.choice(steps)["attrs"]
    key = src.choice(sorted(attrs))
    old = attrs[key]
    if isinstance(old, list) and old and src.coin():
        old[src.integer(0, len(old) - 1)] = src.choice(ABSURD_INTS + [2, 5])
    elif src.coin(1, 4):
        del attrs[key]
    else:
        attrs[key] = src.choice(NASTY + ABSURD_INTS)
    return reseal(manifest, data)


def tensor_bytes(src: Source, raw: bytes) -> bytes:
    """A constant's bytes replaced (weights, thresholds, index or shape tensors), checksum fixed."""
    manifest, data = split(raw)
    name = src.choice(sorted(manifest["tensors"]))
    t = manifest["tensors"][name]
    if t["nbytes"] == 0:
        return reseal(manifest, data)
    chunk = bytearray(data[t["offset"]:t["offset"] + t["nbytes"]])
    for _ in range(src.integer(1, 4)):
        i = src.integer(0, len(chunk) - 1)
        chunk[i] = src.choice([0, 0xFF, 0x7F, 0x80, src.integer(0, 255)])
    data = data[:t["offset"]] + bytes(chunk) + data[t["offset"] + t["nbytes"]:]
    t["sha256"] = hashlib.sha256(bytes(chunk)).hexdigest()
    return reseal(manifest, data)


RAW = [truncate, flip_bits, overwrite, insert_or_delete, header_field, random_file]
# resealed mutations whose every outcome the reader and runtime.validate decide on their own
SCHEMA = [deep_json, tensor_entry, tensor_bytes]
# resealed mutations that can also make a manifest well-formed but inconsistent with what a kernel
# computes (an attribute, a value's shape, which value a step reads): the kernels must refuse those
KERNEL = [text_bytes, replace_node, value_entry, plan_edit, attr_edit]
MUTATORS: list[Callable[[Source, bytes], bytes]] = RAW + SCHEMA + KERNEL


def mutate(src: Source, raw: bytes, mutators=None) -> tuple[str, bytes]:
    """One mutant of ``raw``, stacking up to three mutations; returns (mutator names, bytes)."""
    names, out = [], raw
    for _ in range(src.integer(1, 3)):
        if len(out) < 2:
            break
        m = src.choice(mutators or MUTATORS)
        try:
            out = m(src, out)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError, struct.error):
            break  # an earlier mutation made the file unparsable for this one: keep what we have
        names.append(m.__name__)
    return "+".join(names) or "none", out


SEED_MODELS = ("digits_bnn.onnx", "birealnet.onnx", "ternary.onnx", "pad_minus_one.onnx")


def seed_artifacts(directory: str) -> list[bytes]:
    """Valid artifacts to mutate: the committed example models, compiled into ``directory``."""
    import os

    import bnnc

    models = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "models")
    out = []
    for name in SEED_MODELS:
        path = os.path.join(directory, name.replace(".onnx", ".bnn"))
        bnnc.compile(os.path.join(models, name), path)
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def read(path: str) -> str:
    """The reader's oracle: 'refused' (a BnncError) or 'read' (a validated manifest and tensors)."""
    from runtime import BnncError
    from runtime.artifact import read_artifact

    try:
        read_artifact(path)
    except BnncError:
        return "refused"
    return "read"


def load_and_run(path: str) -> str:
    """The oracle: 'refused' (a BnncError), or 'ran' after one run on a finite input. Any other
    exception propagates: that is a bug."""
    from runtime import BnncError, InferenceSession

    try:
        sess = InferenceSession(path, threads=1)
    except BnncError:
        return "refused"
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in sess.manifest["inputs"]:  # the compiled shapes: a dynamic batch takes multiples of them
        feeds[arg["name"]] = (rng.standard_normal(arg["shape"]) * 2).astype(arg["dtype"])
    try:
        sess.run(None, feeds)
    except BnncError:
        return "refused at run"
    return "ran"
