"""Validation of everything an artifact or a caller hands the runtime, before anything runs.

An artifact may come from anywhere, so its manifest is treated as untrusted data: it is parsed
with bounded size and nesting depth, then checked as a whole before the session builds a single
kernel or allocates a single buffer:

* every value a plan step reads is declared before it is read (a graph input, a constant tensor or
  an output of an earlier step), every value it writes is declared in ``values`` and written once,
  and every graph output is produced;
* shapes are lists of non-negative ints, dtypes are plain numeric dtype names, and every value and
  tensor is bounded in size (MAX_VALUE_BYTES each, MAX_TOTAL_BYTES together) before any allocation;
  a constant tensor must also fit in the bytes the file actually holds;
* tensor offsets are aligned, in range and do not overlap;
* plan steps have a string op and name, lists of string inputs and outputs, and attributes that are
  JSON scalars or (nested) lists of them.

Every violation is a BnncError naming the offending field. ``check_finite`` is the run-time check
on float inputs of a plan that ``binarizes``: bnnc refuses NaN and Inf rather than turning them
into confident bits (a NaN has no sign, so a binarizer cannot propagate it the way onnxruntime's
float graph does); a float-only plan propagates them like onnxruntime.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
from numba import njit

from runtime.errors import BnncError

MAX_MANIFEST_BYTES = 64 << 20  # a real manifest is kilobytes; this bounds the read and the parse
MAX_JSON_DEPTH = 32  # real manifests nest 6 deep (manifest, plan, step, attrs, list, list)
MAX_RANK = 32
MAX_VALUE_BYTES = 1 << 31  # one activation or constant
MAX_TOTAL_BYTES = 1 << 33  # all declared values together (the session reuses buffers, so it needs less)
ALIGN = 64
# dtypes a value may have; constant tensors are limited further by runtime.artifact.DTYPES
VALUE_DTYPES = frozenset(
    ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64")
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FLOAT_MAX = 10**308
_BIG = 1 << 31

# The domain of every attribute the kernels read, by name (the names mean the same in every op that
# has them): ("int", lo, hi), ("ints", lo, hi) for a list of ints, ("num",) a number, ("nums",) a
# list of numbers or null, ("str",). Any other attribute name is only checked to be JSON data.
ATTRIBUTES: dict[str, tuple] = {
    **{k: ("int", 0, 1) for k in ("transA", "transB", "training_mode", "select_last_index", "keepdims",
                                  "noop_with_empty_axes", "count_include_pad", "ceil_mode", "detect_positive",
                                  "detect_negative", "out_mask", "storage_order", "allowzero")},
    **{k: ("int", -1, 2) for k in ("zero", "bits_zero", "pad_value")},
    **{k: ("int", 1, _BIG) for k in ("cin", "k", "channels", "group")},
    "cout": ("int", 0, _BIG), "macs": ("int", 0, 1 << 62), "_opset": ("int", 1, 1000), "to": ("int", 0, 64),
    "axis": ("int", -MAX_RANK, MAX_RANK), "axes": ("ints", -MAX_RANK, MAX_RANK), "perm": ("ints", 0, MAX_RANK - 1),
    "kernel_shape": ("ints", 1, 1 << 16), "strides": ("ints", 1, 1 << 16), "dilations": ("ints", 1, 1 << 16),
    "pads": ("ints", 0, 1 << 16), "in_chw": ("ints", 1, _BIG),
    "starts": ("ints", -(1 << 63), 1 << 63), "ends": ("ints", -(1 << 63), 1 << 63),
    **{k: ("num",) for k in ("scale", "epsilon", "alpha", "beta", "value", "min", "max", "momentum")},
    "activation_params": ("nums",),
    **{k: ("str",) for k in ("output", "in_order", "mode", "auto_pad", "approximate", "activation")},
}


def parse_manifest(text: bytes, where: str) -> dict[str, Any]:
    """Decode the manifest's UTF-8 JSON with a bound on its nesting depth."""
    try:
        manifest = json.loads(text.decode("utf-8"))
    except RecursionError:  # the C decoder guards its recursion and raises this on deep nesting
        raise BnncError(f"{where} has a corrupted manifest (JSON nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: bad JSON or an int of 4300+ digits
        raise BnncError(f"{where} has a corrupted manifest ({str(e).splitlines()[0]})") from None
    if _depth(manifest) > MAX_JSON_DEPTH:
        raise BnncError(f"{where} has a corrupted manifest (JSON nested deeper than {MAX_JSON_DEPTH})")
    if not isinstance(manifest, dict):
        raise BnncError(f"{where} has a corrupted manifest (not a JSON object)")
    return manifest


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                stack.extend((x, d + 1) for x in o)
    return deepest


class _Checker:
    """Walks one manifest; ``fail`` makes the BnncError with the artifact's name."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, what: str) -> BnncError:
        return BnncError(f"{self.where} has an invalid manifest: {what}")

    def field(self, d: dict, key: str, kind: type | tuple, what: str) -> Any:
        v = d.get(key)
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(f"{what}: '{key}' must be a {names}")
        return v

    def count(self, shape: Any, what: str) -> int:
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise self.fail(f"{what}: shape must be a list of at most {MAX_RANK} dimensions")
        if any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MAX_VALUE_BYTES for d in shape):
            raise self.fail(f"{what}: shape {_short(shape)} must hold integers from 0 to {MAX_VALUE_BYTES:,}")
        return math.prod(shape)  # Python ints: no overflow, each factor is already bounded

    def sized(self, d: Any, what: str, dtypes: frozenset[str] | tuple[str, ...]) -> int:
        """Check ``{"shape", "dtype"}`` of a value or tensor; return its byte count."""
        if not isinstance(d, dict):
            raise self.fail(f"{what} must be an object")
        dtype = d.get("dtype")
        if not isinstance(dtype, str) or dtype not in dtypes:
            raise self.fail(f"{what} has dtype {_short(dtype)}, not one of {', '.join(sorted(dtypes))}")
        nbytes = self.count(d.get("shape"), what) * np.dtype(dtype).itemsize
        if nbytes > MAX_VALUE_BYTES:
            raise self.fail(f"{what} claims {nbytes:,} bytes (more than {MAX_VALUE_BYTES:,})")
        return nbytes


def _short(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict, str, int, float, bool)) or v is None else type(v).__name__
    return s if len(s) <= 60 else s[:57] + "..."


def check_manifest(manifest: dict[str, Any], data_bytes: int, where: str,
                   tensor_dtypes: tuple[str, ...], version: int) -> None:
    """Validate a parsed manifest whose data section holds ``data_bytes`` bytes (module docstring)."""
    c = _Checker(where)
    if manifest.get("format_version") != version:
        raise c.fail(f"format_version is {_short(manifest.get('format_version'))}, the header says {version}")
    tensors = c.field(manifest, "tensors", dict, "the manifest")
    _check_tensors(c, tensors, data_bytes, tensor_dtypes)
    values = c.field(manifest, "values", dict, "the manifest")
    total = sum(c.sized(v, f"value '{k}'", VALUE_DTYPES) for k, v in values.items())
    if total > MAX_TOTAL_BYTES:
        raise c.fail(f"its values claim {total:,} bytes together (more than {MAX_TOTAL_BYTES:,})")
    for k in values.keys() & tensors.keys():
        if values[k]["shape"] != tensors[k]["shape"] or values[k]["dtype"] != tensors[k]["dtype"]:
            raise c.fail(f"'{k}' is declared as a value and as a tensor with different shapes or dtypes")
    inputs = _check_io(c, manifest, "inputs", values, tensors)
    defined = set(tensors) | {d["name"] for d in inputs}
    plan = c.field(manifest, "plan", list, "the manifest")
    for i, step in enumerate(plan):
        _check_step(c, i, step, values, defined)
    outputs = _check_io(c, manifest, "outputs", values, tensors)
    for d in outputs:
        if d["name"] not in defined:
            raise c.fail(f"graph output '{d['name']}' is never computed")
    dynamic = manifest.get("dynamic_batch", False)
    if not isinstance(dynamic, bool):
        raise c.fail("'dynamic_batch' must be true or false")
    if dynamic and (not inputs or any(not d["shape"] or d["shape"][0] < 1 for d in inputs + outputs)):
        raise c.fail("a dynamic batch needs inputs, and a leading dimension >= 1 on every input and output")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise c.fail("'metadata' must be an object")


def _check_tensors(c: _Checker, tensors: dict, data_bytes: int, dtypes: tuple[str, ...]) -> None:
    spans = []
    for name, t in tensors.items():
        what = f"tensor '{name}'"
        nbytes = c.sized(t, what, frozenset(dtypes))
        offset = c.field(t, "offset", int, what)
        if c.field(t, "nbytes", int, what) != nbytes:
            raise c.fail(f"{what} has nbytes {t['nbytes']}, but its shape and dtype make {nbytes}")
        if offset < 0 or offset % ALIGN:
            raise c.fail(f"{what} has offset {offset}, which is negative or not a multiple of {ALIGN}")
        if offset + nbytes > data_bytes:
            raise BnncError(f"{c.where} is truncated ({what} ends at byte {offset + nbytes:,} of a "
                            f"{data_bytes:,}-byte data section)")
        if not _SHA256.fullmatch(c.field(t, "sha256", str, what)):
            raise c.fail(f"{what} has a malformed sha256")
        spans.append((offset, nbytes, name))
    spans.sort()
    for (a, n, x), (b, _, y) in zip(spans, spans[1:]):
        if a + n > b:
            raise c.fail(f"tensors '{x}' and '{y}' overlap in the data section")


def _check_io(c: _Checker, manifest: dict, key: str, values: dict, tensors: dict) -> list[dict]:
    items = c.field(manifest, key, list, "the manifest")
    seen = set()
    for d in items:
        if not isinstance(d, dict):
            raise c.fail(f"an entry of '{key}' is not an object")
        name = c.field(d, "name", str, f"an entry of '{key}'")
        declared = values.get(name, tensors.get(name))
        if not name or name in seen or declared is None:
            raise c.fail(f"{key[:-1]} '{name}' is empty, repeated or not a declared value")
        if d.get("shape") != declared["shape"] or d.get("dtype") != declared["dtype"]:
            raise c.fail(f"{key[:-1]} '{name}' has a shape or dtype other than its value's")
        seen.add(name)
    if key == "inputs" and seen & tensors.keys():
        raise c.fail(f"graph input '{min(seen & tensors.keys())}' is also a constant tensor")
    return items


def _check_step(c: _Checker, i: int, step: Any, values: dict, defined: set[str]) -> None:
    if not isinstance(step, dict):
        raise c.fail(f"plan step {i} is not an object")
    op = c.field(step, "op", str, f"plan step {i}")
    what = f"plan step {i} ({op})"
    c.field(step, "name", str, what)
    ins = c.field(step, "inputs", list, what)
    outs = c.field(step, "outputs", list, what)
    if any(not isinstance(n, str) for n in ins + outs):
        raise c.fail(f"{what}: inputs and outputs must be lists of strings")
    for n in ins:
        if n and n not in defined:
            raise c.fail(f"{what} reads '{n}', which is neither an input, a constant nor an earlier result")
    for n in outs:
        if n and (n in defined or n not in values):
            raise c.fail(f"{what} writes '{n}', which is already defined or not a declared value")
        defined.add(n)
    defined.discard("")
    attrs = c.field(step, "attrs", dict, what)
    for k, v in attrs.items():
        if not _json_scalar_or_list(v) or not _in_domain(ATTRIBUTES.get(k), v):
            raise c.fail(f"{what}: attribute '{k}' has the value {_short(v)}, outside its domain")
    lengths = {k: len(attrs[k]) // (2 if k == "pads" else 1) for k in _WINDOW if k in attrs}
    if len(set(lengths.values())) > 1 or (attrs.get("pads") and len(attrs["pads"]) % 2):
        raise c.fail(f"{what}: the window attributes {', '.join(lengths)} disagree in length")


_WINDOW = ("kernel_shape", "strides", "dilations", "pads")  # one entry per spatial axis (pads: two)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v: Any) -> bool:
    """A JSON number that converts to a float (an int of 309+ digits overflows ``float()``)."""
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) <= _FLOAT_MAX)


def _in_domain(rule: tuple | None, v: Any) -> bool:
    if rule is None:
        return True
    kind = rule[0]
    if kind == "int":
        return _is_int(v, rule[1], rule[2])
    if kind == "ints":
        return isinstance(v, list) and len(v) <= 2 * MAX_RANK and all(_is_int(x, rule[1], rule[2]) for x in v)
    if kind == "num":
        return _is_num(v)
    if kind == "nums":
        return v is None or (isinstance(v, list) and all(_is_num(x) for x in v))
    return isinstance(v, str)


def _json_scalar_or_list(v: Any) -> bool:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif not (x is None or isinstance(x, (bool, int, float, str))):
            return False
    return True


BINARIZING_OPS = frozenset(("bnnc.Binarize", "bnnc.BinaryConv", "bnnc.BinaryDense"))


def binarizes(manifest: dict[str, Any]) -> bool:
    """Whether the plan turns floats into bits anywhere; only then are non-finite inputs refused
    (a float-only plan propagates NaN and Inf as onnxruntime does)."""
    return any(s["op"] in BINARIZING_OPS for s in manifest["plan"])


@njit(cache=True, nogil=True)
def _finite32(x):
    """Whether a C-contiguous float32 array holds no NaN or Inf: no bit pattern's exponent field
    is all ones. Exponent field + 1 (in place) carries into the top bit exactly when the field
    is all ones, so one OR over the array tests them all (an OR reduction, which LLVM
    vectorizes; the integer max it replaces ran 1.5x slower: 0.98 -> 0.64 us for a batch of 8
    MNIST images, 21.7 -> 13.7 us for one 224x224 RGB image)."""
    bits = x.reshape(-1).view(np.uint32)
    m = np.uint32(0)
    for i in range(bits.size):
        m |= (bits[i] & np.uint32(0x7F800000)) + np.uint32(0x00800000)
    return m < np.uint32(0x80000000)


@njit(cache=True, nogil=True)
def _finite64(x):
    """``_finite32`` for float64."""
    bits = x.reshape(-1).view(np.uint64)
    m = np.uint64(0)
    for i in range(bits.size):
        m |= (bits[i] & np.uint64(0x7FF0000000000000)) + np.uint64(0x0010000000000000)
    return m < np.uint64(0x8000000000000000)


FINITE = {np.dtype(np.float32): _finite32, np.dtype(np.float64): _finite64}  # C-contiguous arrays only


def check_finite(name: str, x: np.ndarray) -> None:
    """Refuse a float input holding NaN or Inf (see the module docstring for why not propagate).

    C-contiguous float32 and float64 arrays are tested on their bit patterns in one compiled
    call on the array as it is (``_finite32``: the input check was most of a small model's
    time outside its plan); other float types and layouts take numpy's test.
    """
    if x.dtype.kind != "f" or not x.size:
        return
    test = FINITE.get(x.dtype)
    if test is not None and x.flags.c_contiguous:
        if test(x):
            return
    elif np.isfinite(x).all():
        return
    bad = ~np.isfinite(x)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise BnncError(
        f"input '{name}' holds NaN or Inf ({int(bad.sum())} of {x.size} values, the first at index "
        f"{list(first)}: {x[first]}); bnnc needs finite inputs"
    )
