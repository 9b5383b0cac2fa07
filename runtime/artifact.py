"""The bnnc artifact: one data-only file (no pickle, no code).

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"BNNCART\\0"
    offset 8   u32       format version (FORMAT_VERSION)
    offset 12  u32       reserved (0)
    offset 16  u64       manifest length M in bytes
    offset 24  32 bytes  sha256 of the manifest bytes
    offset 56  M bytes   manifest, UTF-8 JSON
    ...        padding to a multiple of ALIGN
    data       raw little-endian tensors, each starting at a multiple of ALIGN

The manifest holds the format version, the producer, inputs and outputs, the shape and dtype of
every value, the ordered plan of kernel calls with their attributes, and for every tensor its
dtype, shape, offset (relative to the data section), byte count and sha256. Loading checks the
magic, the version, the manifest's checksum, its structure (runtime.validate), every bound and
every tensor checksum before anything is used; nothing in the file is ever executed. Reads are
bounded by the file's real size, never by a length the file claims.

Format versions: 1 had no manifest checksum; 2 adds it. A runtime reads only its own version.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from typing import Any

import numpy as np

from runtime.errors import BnncError
from runtime.validate import ALIGN, MAX_MANIFEST_BYTES, check_manifest, parse_manifest

MAGIC = b"BNNCART\0"
FORMAT_VERSION = 2
_HEADER = struct.Struct("<8sIIQ32s")
_VERSION = struct.Struct("<8sI")  # the part of the header every format version shares

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
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(text), hashlib.sha256(text).digest()) + text
    head += b"\0" * _pad(len(head))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bnnc-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise BnncError(f"cannot write '{path}': {e.strerror or e}") from None
        raise
    return len(head) + offset


def read_artifact(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify an artifact; return ``(manifest, tensors)``.

    Raises BnncError for a missing file, a file that is not an artifact, an unknown format
    version, a truncated file, a manifest that fails its checksum or its validation
    (runtime.validate), or a tensor whose checksum does not match.
    """
    where = f"'{path}'"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: opening a FIFO would block
            raise BnncError(f"{where} is not a regular file")
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            manifest, data_start = _read_manifest(f, info.st_size, where)
            data_bytes = info.st_size - data_start
            check_manifest(manifest, data_bytes, where, DTYPES, FORMAT_VERSION)
            f.seek(data_start)
            data = f.read(data_bytes)
    except OSError as e:
        raise BnncError(f"cannot read artifact {where}: {e.strerror or e}") from None
    if len(data) != data_bytes:
        raise BnncError(f"{where} changed while it was being read")
    tensors = {name: _load_tensor(where, data, name, t) for name, t in manifest["tensors"].items()}
    return manifest, tensors


def _read_manifest(f, size: int, where: str) -> tuple[dict[str, Any], int]:
    """Check the header, read and verify the manifest; return it and the data section's start."""
    head = f.read(_HEADER.size)
    if len(head) < _VERSION.size or head[:8] != MAGIC:
        raise BnncError(f"{where} is not a bnnc artifact (bad magic bytes)")
    _, version = _VERSION.unpack_from(head)
    if version != FORMAT_VERSION:
        raise BnncError(
            f"{where} has artifact format version {version}; this runtime reads version "
            f"{FORMAT_VERSION} (recompile the model with a matching bnnc)"
        )
    if len(head) < _HEADER.size:
        raise BnncError(f"{where} is truncated (the header is incomplete)")
    _, _, _, mlen, digest = _HEADER.unpack(head)
    if mlen > MAX_MANIFEST_BYTES:
        raise BnncError(f"{where} is corrupted (it claims a {mlen:,}-byte manifest)")
    end = _HEADER.size + mlen
    if end > size:
        raise BnncError(f"{where} is truncated (manifest ends past the end of the file)")
    text = f.read(mlen)
    if len(text) != mlen:
        raise BnncError(f"{where} is truncated (manifest ends past the end of the file)")
    if hashlib.sha256(text).digest() != digest:
        raise BnncError(f"{where} is corrupted: checksum mismatch in the manifest")
    data_start = end + _pad(end)
    if data_start > size:
        raise BnncError(f"{where} is truncated (the data section is missing)")
    return parse_manifest(text, where), data_start


def _load_tensor(where: str, data: bytes, name: str, t: dict) -> np.ndarray:
    """One tensor whose entry runtime.validate has checked (dtype, shape, bounds)."""
    begin, nbytes = t["offset"], t["nbytes"]
    chunk = data[begin:begin + nbytes]
    if hashlib.sha256(chunk).hexdigest() != t["sha256"]:
        raise BnncError(f"{where} is corrupted: checksum mismatch in tensor '{name}'")
    dtype = np.dtype(t["dtype"])
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(t["shape"])
