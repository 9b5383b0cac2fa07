"""The bnnc artifact: one data-only file (no pickle, no code).

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"BNNCART\\0"
    offset 8   u32       format version (FORMAT_VERSION)
    offset 12  u32       reserved (0)
    offset 16  u64       manifest length M in bytes
    offset 24  M bytes   manifest, UTF-8 JSON
    ...        padding to a multiple of ALIGN
    data       raw little-endian tensors, each starting at a multiple of ALIGN

The manifest holds the format version, the producer, inputs and outputs, the shape and dtype of
every value, the ordered plan of kernel calls with their attributes, and for every tensor its
dtype, shape, offset (relative to the data section), byte count and sha256. Loading checks the
magic, the version, every bound and every checksum before anything is used; nothing in the file
is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from typing import Any

import numpy as np

from runtime.errors import BnncError

MAGIC = b"BNNCART\0"
FORMAT_VERSION = 1
ALIGN = 64
_HEADER = struct.Struct("<8sIIQ")

# dtypes an artifact may carry; anything else is rejected on load (no object arrays, ever)
DTYPES = ("float32", "float64", "int8", "int32", "int64", "uint8", "uint64", "bool")


def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_artifact(path: str, manifest: dict[str, Any], tensors: dict[str, np.ndarray]) -> int:
    """Write ``manifest`` and ``tensors`` to ``path`` atomically; return the file size.

    The file is written to a temporary name beside ``path`` and renamed over it only when
    complete, so a failure never leaves a partial artifact behind.
    """
    table: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr, order="C")  # (ascontiguousarray would make scalars 1-D)
        dtype = str(arr.dtype)
        if dtype not in DTYPES:
            raise BnncError(f"tensor '{name}' has dtype {dtype}, which an artifact cannot hold")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        table[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "offset": offset,
            "nbytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        blobs.append(data + b"\0" * _pad(len(data)))
        offset += len(data) + _pad(len(data))
    manifest = dict(manifest, format_version=FORMAT_VERSION, tensors=table)
    text = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(text)) + text
    head += b"\0" * _pad(len(head))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bnnc-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(head) + offset


def read_artifact(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify an artifact; return ``(manifest, tensors)``.

    Raises BnncError for a missing file, a file that is not an artifact, an unknown format
    version, a truncated file, or a tensor whose checksum does not match.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BnncError(f"cannot read artifact '{path}': {e.strerror}") from None
    if len(raw) < _HEADER.size or raw[:8] != MAGIC:
        raise BnncError(f"'{path}' is not a bnnc artifact (bad magic bytes)")
    _, version, _, mlen = _HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise BnncError(
            f"'{path}' has artifact format version {version}; this runtime reads version "
            f"{FORMAT_VERSION} (recompile the model with a matching bnnc)"
        )
    end = _HEADER.size + mlen
    if end > len(raw):
        raise BnncError(f"'{path}' is truncated (manifest ends past the end of the file)")
    try:
        manifest = json.loads(raw[_HEADER.size:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnncError(f"'{path}' has a corrupted manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise BnncError(f"'{path}' has a corrupted manifest (format version mismatch)")
    data_start = end + _pad(end)
    tensors = {}
    for name, t in manifest.get("tensors", {}).items():
        tensors[name] = _load_tensor(path, raw, data_start, name, t)
    return manifest, tensors


def _load_tensor(path: str, raw: bytes, data_start: int, name: str, t: dict) -> np.ndarray:
    try:
        dtype, shape, offset, nbytes = t["dtype"], tuple(t["shape"]), t["offset"], t["nbytes"]
        digest = t["sha256"]
    except (KeyError, TypeError):
        raise BnncError(f"'{path}' has a corrupted manifest entry for tensor '{name}'") from None
    if dtype not in DTYPES:
        raise BnncError(f"'{path}': tensor '{name}' has unsupported dtype '{dtype}'")
    count = int(np.prod(shape, dtype=np.int64))
    if count * np.dtype(dtype).itemsize != nbytes or offset < 0:
        raise BnncError(f"'{path}': tensor '{name}' has an inconsistent size in the manifest")
    begin = data_start + offset
    if begin + nbytes > len(raw):
        raise BnncError(f"'{path}' is truncated (tensor '{name}' ends past the end of the file)")
    data = raw[begin:begin + nbytes]
    if hashlib.sha256(data).hexdigest() != digest:
        raise BnncError(f"'{path}' is corrupted: checksum mismatch in tensor '{name}'")
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
