"""Artifacts are little-endian on disk whatever the host, and read back as native arrays.

The reader never reinterprets file bytes in the host's order: every tensor is read with an
explicit little-endian dtype and converted to native order, so an artifact written on x86-64 reads
the same on AArch64 (also little-endian; ``make aarch64-check`` compares them) and on a big-endian
host. Bit-packed words are uint64 like any other tensor.
"""

import numpy as np

import bnnc
from runtime.artifact import _HEADER, ALIGN, read_artifact
from tests.binary_mlp import binary_mlp
from tests.helpers import save


def test_tensors_are_little_endian_on_disk_and_native_in_memory(tmp_path):
    path = str(tmp_path / "m.bnn")
    bnnc.compile_model(save(binary_mlp(), str(tmp_path)), path)
    raw = open(path, "rb").read()
    mlen = _HEADER.unpack_from(raw)[3]  # magic, version, reserved, manifest length, ...
    start = _HEADER.size + mlen + (-(_HEADER.size + mlen)) % ALIGN
    manifest, tensors = read_artifact(path)
    assert any(a.dtype == np.uint64 for a in tensors.values())  # the packed weights
    for name, arr in tensors.items():
        t = manifest["tensors"][name]
        assert arr.dtype.isnative
        on_disk = raw[start + t["offset"]:start + t["offset"] + t["nbytes"]]
        assert on_disk == arr.astype(arr.dtype.newbyteorder("<")).tobytes(), name
        assert np.array_equal(np.frombuffer(on_disk, arr.dtype.newbyteorder("<")).reshape(arr.shape), arr)
