"""The HTML compile report: self-contained, names every conv/linear layer, and renders in headless
Chromium (screenshot not blank, the page's script ran without an error, no console errors)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from tests.bnn_graphs import Builder
from tests.helpers import CORPUS, make_model, needs_corpus, save

LAYER_OPS = ("Conv", "Gemm", "MatMul")


def _chromium() -> str | None:
    """The Chromium binary, installed with apt-get (Debian's `chromium`) when missing and root."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium():
    path = _chromium()
    if path is None:
        pytest.skip("Chromium is not installed and cannot be installed here (needs root and apt-get)")
    return path


def render(chromium: str, page: Path, tmp: Path) -> tuple[str, np.ndarray, str]:
    """(DOM after the page's script ran, screenshot pixels, browser log) of ``page``."""
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1400,2000"]
    shot = tmp / "shot.png"
    r1 = subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
    r2 = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    return r2.stdout, pixels, r1.stderr + r2.stderr


def check_page(chromium: str, page: Path, tmp: Path, names: list[str]) -> str:
    dom, pixels, log = render(chromium, page, tmp)
    status = re.search(r'id="bnnc-status" data-status="([^"]*)"', dom)
    assert status and status.group(1) == "ok", status.group(1) if status else dom[-500:]
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert not [c for c in console if "rror" in c or "Uncaught" in c], console
    assert pixels.shape[:2] == (2000, 1400)
    not_white = np.any(pixels < 240, axis=2).mean()
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2) > 80).mean()  # the mode colours
    colors = len(np.unique(pixels.reshape(-1, 3)[::37], axis=0))
    assert not_white > 0.02 and coloured > 0.002 and colors > 20, (not_white, coloured, colors)
    for n in names:
        assert f'data-name="{n}"' in dom, n
    return dom


def layer_names(path: str) -> list[str]:
    return [n.name for n in onnx.load(path, load_external_data=False).graph.node if n.op_type in LAYER_OPS]


def bnn_model(tmp_path: Path) -> str:
    b = Builder(seed=7)
    h = b.op("Conv", ["x", b.const(b.rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")], "stem", pads=[1, 1, 1, 1])
    h = b.op("Conv", [b.sign(b.bn(h, 16)), b.const(b.pm1((32, 16, 3, 3)), "w")], "bconv", pads=[1, 1, 1, 1])
    h = b.op("Conv", [b.sign(b.bn(h, 32)), b.const(b.pm1((32, 32, 3, 3), alpha=np.linspace(0.2, 1, 32)), "w")], "bconv")
    f = b.op("Flatten", [b.sign(b.bn(h, 32))])
    y = b.op("Gemm", [f, b.const(b.rng.standard_normal((10, 32 * 4 * 4)).astype(np.float32), "fc")], "fc", transB=1)
    return save(make_model(b.nodes, [("x", [1, 3, 6, 6])], [(y, [1, 10])], b.inits), str(tmp_path))


def invoke(*args) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def test_report_is_self_contained_and_complete(tmp_path):
    model = bnn_model(tmp_path)
    code, out, err = invoke("compile", model, "-o", tmp_path / "m.bnn", "--report", tmp_path / "r.html")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    for pattern in (r"<script[^>]+src", r"<link", r"url\(", r"@import", r"<img", r"<iframe"):
        assert not re.search(pattern, page), pattern
    names = layer_names(model)
    assert len(names) == 4
    for n in names:
        assert f'<tr data-name="{n}"' in page and f'<g class="node" data-name="{n}"' in page
    assert "stays float" in page and "xnor" in page and "fold-thresholds-into-binary-layers" in page
    assert "distinct kxk codewords" in page and "MST: XNOR work left" in page


def test_report_with_profile_and_errors(tmp_path):
    model = bnn_model(tmp_path)
    manifest_names = [n["name"] for n in json.loads(invoke("inspect", model, "--json")[1])["nodes"]]
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"profile": [{"name": n, "op": "x", "median_ms": 0.5 + i} for i, n in enumerate(manifest_names)]}))
    code, _, err = invoke("report", model, "-o", tmp_path / "r.html", "--profile", profile)
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "Time per kernel" in page and "Time per layer" in page and "kernel time (sum of medians)" in page
    layer_rows = page.split("<h2>Layers")[1].split("<h2>Charts")[0]
    timed = [f"{0.5 + i:.3f}" for i, n in enumerate(manifest_names) if f'<tr data-name="{n}"' in layer_rows]
    assert timed and all(t in layer_rows for t in timed)
    (tmp_path / "bad.json").write_text('{"speedup": 2}')
    code, _, err = invoke("report", model, "-o", tmp_path / "r2.html", "--profile", tmp_path / "bad.json")
    assert code == 2 and err.startswith("error: ") and "no kernel profile" in err
    assert not (tmp_path / "r2.html").exists()
    code, _, err = invoke("report", tmp_path / "missing.bnn", "-o", tmp_path / "r3.html")
    assert code == 2 and "no such file" in err
    code, _, err = invoke("compile", model, "-o", tmp_path / "m.bnn", "--report", tmp_path / "no" / "r.html")
    assert code == 2 and "does not exist" in err and not (tmp_path / "m.bnn").exists()


def test_report_renders_in_chromium(tmp_path, chromium):
    model = bnn_model(tmp_path)
    assert invoke("compile", model, "-o", tmp_path / "m.bnn")[0] == 0
    assert invoke("report", tmp_path / "m.bnn", "-o", tmp_path / "r.html")[0] == 0  # from the artifact
    check_page(chromium, tmp_path / "r.html", tmp_path, layer_names(model))


@needs_corpus
def test_corpus_report_renders_in_chromium(tmp_path, chromium):
    model = str(CORPUS / "brevitas_cnv_1w1a_half_qonnx" / "model.onnx")
    code, _, err = invoke("report", model, "-o", tmp_path / "r.html")
    assert code == 0, err
    names = layer_names(model)
    assert len(names) == 9
    dom = check_page(chromium, tmp_path / "r.html", tmp_path, names)
    assert "94.9%" in dom  # binary share of the MACs: all but the binary-weight stem
