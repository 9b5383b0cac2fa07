"""One InferenceSession shared by 8 threads gives every thread the serial result.

Each thread runs its own input 20 times, all threads at once; any state two inferences share
(a planned buffer, a kernel's padded-input copy, a GEMM band) would mix one thread's data into
another's outputs. The models are the committed ones in models/, chosen to cover the kernels that
write scratch: BinaryConv's regrouped and merged inputs (both paths), the float Conv's phase
planes and patch matrices, BinaryDense, pools.
"""

import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

import bnnc
from runtime import InferenceSession

MODELS = Path(__file__).resolve().parents[2] / "models"
THREADS, RUNS = 8, 20


def _session(name: str, threads: int) -> tuple[InferenceSession, str, list[np.ndarray]]:
    d = tempfile.mkdtemp()
    res = bnnc.compile_model(str(MODELS / name), os.path.join(d, "m.bnn"))
    sess = InferenceSession(res.path, threads=threads, plan="emitted")
    inp = sess.get_inputs()[0]
    shape = [1 if isinstance(s, str) else s for s in inp.shape]
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=shape).astype(np.float32) for _ in range(THREADS)]
    for x in xs[::2]:  # exact zeros: the activation-mask paths run too
        x.reshape(-1)[::5] = 0
    return sess, inp.name, xs


def _hammer(sess: InferenceSession, name: str, xs: list[np.ndarray], expect: list[list[np.ndarray]]) -> int:
    """Run every input RUNS times from its own thread, all at once; count differing results."""
    bad = [0] * len(xs)
    start = threading.Barrier(len(xs))

    def work(i: int) -> None:
        start.wait()
        for _ in range(RUNS):
            got = sess.run(None, {name: xs[i]})
            bad[i] += any(not np.array_equal(g, e) for g, e in zip(got, expect[i]))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(bad)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("model", ["digits_bnn.onnx", "birealnet.onnx", "bwn.onnx", "xnornet.onnx", "ternary.onnx"])
def test_one_session_from_eight_threads_gives_serial_results(model, threads):
    sess, name, xs = _session(model, threads)
    serial = [sess.run(None, {name: x}) for x in xs]
    assert len({e[0].tobytes() for e in serial}) == len(xs)  # the inputs really differ
    assert _hammer(sess, name, xs, serial) == 0


def test_sessions_in_one_process_do_not_interfere():
    a, name_a, xa = _session("digits_bnn.onnx", 2)
    b, name_b, xb = _session("birealnet.onnx", 2)
    ea = [a.run(None, {name_a: x}) for x in xa]
    eb = [b.run(None, {name_b: x}) for x in xb]
    bad = [0, 0]

    def side(k: int, sess, name, xs, expect) -> None:
        bad[k] = _hammer(sess, name, xs[:4], expect[:4])

    ts = [threading.Thread(target=side, args=(0, a, name_a, xa, ea)),
          threading.Thread(target=side, args=(1, b, name_b, xb, eb))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert bad == [0, 0]


def test_a_session_used_from_one_thread_keeps_one_workspace():
    sess, name, xs = _session("birealnet.onnx", 1)
    for x in xs:
        sess.run(None, {name: x})
    assert len(sess._idle) == 1
