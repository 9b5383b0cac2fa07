"""Dense products on register tiles (runtime/kernels/dense_tiles.py): the kernel against numpy
for every row count 1..9 and a few above (one block of rows, blocks of the full tile with a
rest, padded ones), odd k and column counts that do not fill a panel, every activation, the
columns over several tasks; the choice of blocks; Gemm through a session against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import runtime.kernels.base as base
import runtime.kernels.conv_tile as ct
import runtime.kernels.dense as dense
from runtime.kernels import KERNELS, Step
from runtime.kernels import dense_tiles as dt
from tests.runtime.test_float_helpers import check, randn


def _act(y, kind, a0, a1):
    """numpy reference of act_rows (runtime/kernels/nn.py ACTIVATIONS)."""
    return [y, np.maximum(y, 0), np.where(y >= 0, y, y * a0), np.clip(y, a0, a1), 1 / (1 + np.exp(-y)), np.tanh(y),
            np.clip(y * a0 + a1, 0, 1)][kind]


def _run(n, k, m, kind=0, a0=0.0, a1=0.0, tasks=1, parallel=False, bias=True):
    rng = np.random.default_rng(n * 1000 + k * 10 + m)
    a = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal((k, m)).astype(np.float32)
    c = rng.standard_normal(m).astype(np.float32) if bias else None
    t = dt.DenseTiles(b, c, n)
    y = np.full((n, m), np.nan, np.float32)
    ap = np.full(t.ap_shape, np.nan, np.float32)  # every packed value is written, padded rows too
    kernel = dt.dense_tiles.parallel if parallel else dt.dense_tiles.serial
    kernel(a, ap, t.b, t.offs, y, t.zero, t.blocks, t.nr, tasks, kind, a0, a1)
    want = a.astype(np.float64) @ b.astype(np.float64) + (0 if c is None else c.astype(np.float64))
    return y, _act(want, kind, a0, a1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 17])
@pytest.mark.parametrize("k,m", [(1, 5), (63, 33), (130, 100), (257, 1)])
def test_rows_match_numpy(n, k, m):
    y, want = _run(n, k, m, kind=1)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("kind,a0,a1", [(0, 0.0, 0.0), (2, 0.1, 0.0), (3, -0.5, 0.75), (4, 0.0, 0.0), (5, 0.0, 0.0),
                                        (6, 0.2, 0.5)])
@pytest.mark.parametrize("n", [2, 3, 6, 7])
def test_activations_and_no_bias(n, kind, a0, a1):
    y, want = _run(n, 65, 47, kind, a0, a1, bias=kind % 2 == 0)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("tasks", [2, 3])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_columns_over_tasks(n, tasks):
    """Runs of whole panels, one per task; the last task may get a short run, or none."""
    y, want = _run(n, 31, 170, kind=2, a0=0.3, tasks=tasks, parallel=True)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("n", range(1, 3 * dt.MAX_ROWS))
def test_blocks_cover_the_rows(n):
    """Blocks cover rows 0..n in order; a tile of the table holds the host's registers; a product
    of up to MAX_ROWS rows pads none when its tile has two vectors or more, and only the last
    block of a larger one is padded."""
    blocks, vectors = dt.blocks_of(n)
    assert blocks[0, 0] == 0 and all(blocks[i + 1, 0] == blocks[i, 0] + blocks[i, 1] for i in range(len(blocks) - 1))
    assert blocks[-1, 0] + blocks[-1, 2] == n and all(blocks[:-1, 1] == blocks[:-1, 2])
    for _, rows, _ in blocks:
        assert dt.SHAPES[rows] == vectors or rows == ct.MR and vectors == ct.V
        assert rows * vectors + vectors + 1 <= dt.REGISTERS and rows * vectors <= ct.MR * ct.V
    if n <= dt.MAX_ROWS and dt.SHAPES[n] >= 2:
        assert blocks.tolist() == [[0, n, n]]


# rows, k, columns
DENSE = [(4, 300, 33), (8, 1, 5), (8, 63, 1), (9, 64, 31), (17, 65, 130), (6, 257, 64), (2, 70, 100), (3, 1, 65),
         (5, 33, 47), (7, 20, 9), (1, 300, 33), (1, 1, 5), (1, 65, 130), (1, 64, 1)]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("rows,k,cols", DENSE)
def test_gemm_on_tiles_matches_onnxruntime(rows, k, cols, parallel, monkeypatch):
    """Gemm with a constant B and a bias row on the tiles, the columns over threads."""
    monkeypatch.setattr(base, "PARALLEL_WORK", 0 if parallel else 1 << 40)
    monkeypatch.setattr(dense, "_SPLIT_MACS", 0 if parallel else 1 << 40)
    inits = {"w": randn(cols, k, salt=1), "b": randn(cols, salt=2)}
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)
    check(node, {"x": randn(rows, k)}, inits)
    step = Step(name="g", op="Gemm", attrs={"transB": 1}, in_shapes=[(rows, k), (cols, k), (cols,)],
                in_dtypes=["float32"] * 3, out_shapes=[(rows, cols)], out_dtypes=["float32"],
                consts=[None, inits["w"], inits["b"]])
    product = KERNELS["Gemm"](step).product
    assert product.tiles is not None and product.tiles.nr == dt.blocks_of(rows)[1] * ct.LANES
