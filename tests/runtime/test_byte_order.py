"""Artifacts are little-endian on disk whatever the host, and read back as native arrays.

The reader never reinterprets file bytes in the host's order: every tensor is read with an
explicit little-endian dtype and converted to native order, so an artifact written on x86-64 reads
the same on AArch64 (also little-endian; the emulated check compares them) and on a big-endian
host. Bit-packed words are uint64 like any other tensor.
"""

import json
import struct

import numpy as np

from runtime.artifact import _HEADER, ALIGN, read_artifact, write_artifact


def test_tensors_are_little_endian_on_disk_and_native_in_memory(tmp_path):
    words = np.array([1, 0x8000_0000_0000_0001, 0x0123_4567_89AB_CDEF], np.uint64)
    floats = np.array([1.5, -2.25], np.float32)
    path = str(tmp_path / "m.bnn")
    write_artifact(path, {"plan": []}, {"words": words, "f": floats})
    raw = open(path, "rb").read()
    _, _, _, mlen = _HEADER.unpack_from(raw)
    manifest = json.loads(raw[_HEADER.size:_HEADER.size + mlen])
    start = _HEADER.size + mlen + (-(_HEADER.size + mlen)) % ALIGN
    t = manifest["tensors"]
    assert raw[start + t["words"]["offset"]:][:24] == struct.pack("<3Q", *map(int, words))
    assert raw[start + t["f"]["offset"]:][:8] == struct.pack("<2f", 1.5, -2.25)
    _, tensors = read_artifact(path)
    assert tensors["words"].dtype.isnative and tensors["f"].dtype.isnative
    np.testing.assert_array_equal(tensors["words"], words)
    np.testing.assert_array_equal(tensors["f"], floats)
