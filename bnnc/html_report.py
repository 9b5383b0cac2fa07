"""The compile report: one self-contained HTML page (inline CSS, SVG and a little JS, nothing
fetched) built from ``bnnc.report.build_report``.

Sections: totals (binary share of the MACs, compression), the plan as a diagram (one box per
kernel, layered by depth; conv/linear layers coloured by mode, float ones carry the reason they
stayed float), the layer table (shapes, MACs, binary MACs, bytes before and after, threshold
statistics, kernel codewords, MST estimate, time), bar charts of MACs, bytes and (given the
``profile`` of ``bnnc bench --profile --json``) time per layer, and the passes with their stats
and timings. The page's script sorts the tables and links table rows to diagram boxes; when it
has run without an exception it sets ``data-status="ok"`` on ``#bnnc-status`` (an uncaught error
writes ``error: ...`` there instead), which the tests read from the rendered DOM.
"""

from __future__ import annotations

import json
from typing import Any

from bnnc.html_assets import COLORS, CSS, SCRIPT
from bnnc.html_charts import bar_chart, esc, num, tail

BOX_W, BOX_H, GAP_X, GAP_Y = 190, 34, 24, 22
BAND = 16  # diagram rows before the next band starts to the right


def render(report: dict[str, Any], profile: list[dict] | None = None) -> str:
    """The report page of ``report`` (and per-kernel ``profile`` rows, if given) as one string."""
    times = {p["name"]: float(p["median_ms"]) for p in profile or []}
    title = f"bnnc report: {report['model']}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(report.get("producer", ""))} &middot; graph {esc(report.get("graph_name", ""))}</p>',
        totals(report, times),
        "<h2>Network</h2>", legend(), f'<div class="diagram">{diagram(report)}</div>',
        "<h2>Layers</h2>", layer_table(report["layers"], times),
        "<h2>Charts</h2>", charts(report, times),
        "<h2>Passes</h2>", passes_table(report.get("passes")),
        '<div id="bnnc-status" data-status="pending"></div>',
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def totals(report: dict, times: dict) -> str:
    layers = report["layers"]
    counts = {m: sum(1 for r in layers if r["mode"] == m) for m in COLORS}
    cards = [
        ("binary share of MACs", f"{report['binary_mac_fraction']:.1%}"),
        ("MACs (layers)", num(sum(r["macs"] for r in layers))),
        ("artifact", f"{report['artifact_bytes']:,} B"),
        ("ONNX model", f"{report['fp32_bytes']:,} B" if report["fp32_bytes"] else "unknown"),
        ("compression", f"{report['compression']:.1f}x" if report.get("compression") else "n/a"),
        ("layers", ", ".join(f"{n} {m}" for m, n in counts.items() if n) or "none"),
        ("kernels", str(len(report["nodes"]))),
    ]
    if times:
        cards.append(("kernel time (sum of medians)", f"{sum(times.values()):.3f} ms"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>' for k, v in cards
    ) + "</div>"


def legend() -> str:
    items = list(COLORS.items()) + [("other op", "#dee2e6")]
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{esc(m)}</span>' for m, c in items
    ) + "</p>"


def _levels(nodes: list[dict]) -> list[int]:
    """Depth of every plan step: one more than the deepest step producing one of its inputs."""
    depth_of: dict[str, int] = {}
    levels = []
    for n in nodes:
        d = 1 + max((depth_of[i] for i in n["inputs"] if i in depth_of), default=-1)
        levels.append(d)
        for o in n["outputs"]:
            depth_of[o] = d
    return levels


def diagram(report: dict) -> str:
    """The plan as an SVG: boxes in rows by depth, an edge from producer to reader. Deep plans
    fold into bands of ``BAND`` rows side by side, so the page is not one endless column."""
    nodes = report["nodes"]
    modes = {r["name"]: r for r in report["layers"]}
    levels = _levels(nodes)
    col: dict[int, int] = {}
    pos = []
    for lv in levels:
        pos.append((col.get(lv, 0), lv))
        col[lv] = col.get(lv, 0) + 1
    band_w = max(col.values(), default=1) * (BOX_W + GAP_X) + 2 * GAP_X
    bands = max(levels, default=0) // BAND + 1
    rows = min(max(levels, default=0) + 1, BAND)
    width, height = bands * band_w, rows * (BOX_H + GAP_Y) + GAP_Y
    xy = [(GAP_X + (r // BAND) * band_w + c * (BOX_W + GAP_X), GAP_Y + (r % BAND) * (BOX_H + GAP_Y)) for c, r in pos]
    producer = {o: i for i, n in enumerate(nodes) for o in n["outputs"]}
    edges = []
    for j, n in enumerate(nodes):
        for name in n["inputs"]:
            i = producer.get(name)
            if i is not None:
                x1, y1 = xy[i][0] + BOX_W / 2, xy[i][1] + BOX_H
                x2, y2 = xy[j][0] + BOX_W / 2, xy[j][1]
                bend = 0 if levels[j] - levels[i] == 1 else BOX_W * 0.6  # skip edges go round the boxes
                edges.append(f'<path d="M{x1},{y1} C{x1 + bend},{y1 + 40} {x2 + bend},{y2 - 40} {x2},{y2}"/>')
    boxes = [_box(n, modes.get(n["name"]), x, y) for n, (x, y) in zip(nodes, xy)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><g class="edges">{"".join(edges)}</g>{"".join(boxes)}</svg>')


def _box(node: dict, layer: dict | None, x: int, y: int) -> str:
    mode = layer["mode"] if layer else None
    fill = COLORS.get(mode, "#dee2e6")
    label = tail(node["name"], 24)
    op = node["op"].removeprefix("bnnc.")
    sub = f"{op} \u00b7 {mode}" if mode else op
    tip = f"{node['name']} ({node['op']}) -> {'x'.join(map(str, node['output_shape']))}"
    if layer and layer.get("reason"):
        tip += f"\nstays float: {layer['reason']}"
        sub = f"{op} \u00b7 float: {layer['reason']}"
    text_color = "#fff" if mode else "#212529"
    return (f'<g class="node" data-name="{esc(node["name"])}"><title>{esc(tip)}</title>'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="{fill}"/>'
            f'<text x="{x + 6}" y="{y + 14}" fill="{text_color}" class="n">{esc(label)}</text>'
            f'<text x="{x + 6}" y="{y + 28}" fill="{text_color}" class="o">{esc(sub[:34])}</text></g>')


def _shape(s: list | None) -> str:
    return "x".join(map(str, s)) if s else ""


def layer_table(layers: list[dict], times: dict) -> str:
    head = ["layer", "op", "kernel", "mode", "input", "output", "MACs", "binary MACs", "fp32 bytes",
            "packed bytes", "channels: flipped / constant / tied", "threshold range", "distinct kxk codewords",
            "top-16 share", "codeword entropy (bits)", "MST: XNOR work left", "time (ms)", "why float"]
    rows = []
    for r in layers:
        t, an = r.get("thresholds"), r.get("analysis")
        cw, mst = (an or {}).get("codewords"), (an or {}).get("mst")
        cells = [
            r["name"], r["op"], (r.get("kernel") or "").removeprefix("bnnc."),
            f'<span class="badge" style="background:{COLORS[r["mode"]]}">{esc(r["mode"])}</span>',
            _shape(r.get("input_shape")), _shape(r.get("output_shape")), f"{r['macs']:,}", f"{r['binary_macs']:,}",
            f"{r['weight_bytes']:,}", f"{r['packed_weight_bytes']:,}",
            f"{t['channels']}: {t['flipped']} / {t['constant']} / {t['tied']}" if t else "",
            f"[{t['threshold_min']}, {t['threshold_max']}]" if t and t["threshold_min"] is not None else "",
            f"{cw['distinct']} of {cw['possible']}" if cw else "", f"{cw['top16_share']:.1%}" if cw else "",
            f"{cw['entropy_bits']:.2f}" if cw else "", f"{mst['xnor_fraction']:.1%}" if mst else "",
            f"{times[r['name']]:.3f}" if r["name"] in times else "", r.get("reason", ""),
        ]
        safe = [c if i == 3 else esc(c) for i, c in enumerate(cells)]
        rows.append(f'<tr data-name="{esc(r["name"])}">' + "".join(f"<td>{c}</td>" for c in safe) + "</tr>")
    if not rows:
        return "<p>The model has no convolution or linear layer.</p>"
    return ('<div class="scroll"><table class="sortable"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def charts(report: dict, times: dict) -> str:
    layers = report["layers"]
    modes = {r["name"] for r in layers}
    names = [r["name"] for r in layers]
    out = [
        bar_chart("MACs per layer", names, [
            ("binary MACs", COLORS["xnor"], [r["binary_macs"] for r in layers]),
            ("other MACs", COLORS["float"], [r["macs"] - r["binary_macs"] for r in layers])], "MACs", stacked=True),
        bar_chart("Weight bytes per layer", names, [
            ("fp32", "#868e96", [r["weight_bytes"] for r in layers]),
            ("packed", COLORS["binary-weight"], [r["packed_weight_bytes"] for r in layers])], "bytes"),
    ]
    if times:
        timed = [r for r in layers if r["name"] in times]
        other = sum(t for n, t in times.items() if n not in modes)
        out.append(bar_chart("Time per layer (median ms; binarize, pooling and other kernels summed last)",
                             [r["name"] for r in timed] + ["other kernels"], [
            ("binary layer", COLORS["xnor"], [times[r["name"]] if r["mode"] != "float" else 0.0 for r in timed] + [0.0]),
            ("float layer", COLORS["float"], [times[r["name"]] if r["mode"] == "float" else 0.0 for r in timed] + [0.0]),
            ("other", "#868e96", [0.0] * len(timed) + [other])], "ms", stacked=True))
        kernels = sorted(report["nodes"], key=lambda n: -times.get(n["name"], 0.0))
        kernels = [n for n in kernels if n["name"] in times][:40]
        out.append(bar_chart("Time per kernel (median ms, slowest 40)", [n["name"] for n in kernels], [
            ("time", COLORS["ternary"], [times[n["name"]] for n in kernels])], "ms", stacked=True))
    else:
        out.append('<p class="note">No profile given: <code>bnnc bench MODEL.onnx --profile --json &gt; '
                   'p.json</code>, then <code>--profile p.json</code>, adds time per layer.</p>')
    return '<div class="charts">' + "".join(out) + "</div>"


def passes_table(passes: list[dict] | None) -> str:
    if passes is None:
        return '<p class="note">Compile from the .onnx model to see the passes (an artifact does not keep them).</p>'
    rows = []
    for p in passes:
        stats = ", ".join(f"{k}={v}" for k, v in p["stats"].items())
        reasons = "".join(f"<li>{esc(r)}</li>" for r in p["reasons"])
        detail = f"<details><summary>{len(p['reasons'])} notes</summary><ul>{reasons}</ul></details>" if reasons else ""
        rows.append(f"<tr><td>{p['index']}</td><td>{esc(p['name'])}</td><td>{'yes' if p['modified'] else 'no'}</td>"
                    f"<td>{p['seconds'] * 1e3:.1f}</td><td>{esc(stats)}</td><td>{detail}</td>"
                    f"<td>{esc(json.dumps(p['op_counts'])[1:-1])}</td></tr>")
    total = sum(p["seconds"] for p in passes) * 1e3
    return ('<div class="scroll"><table class="sortable"><thead><tr><th>#</th><th>pass</th><th>changed</th>'
            "<th>ms</th><th>stats</th><th>notes</th><th>ops after the pass</th></tr></thead><tbody>"
            + "".join(rows) + f"</tbody></table></div><p>passes total: {total:.1f} ms</p>")


def read_profile(path: str) -> list[dict]:
    """The per-kernel rows of ``bnnc bench --profile --json`` output (or of a bare list of them)."""
    from runtime.errors import BnncError

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise BnncError(f"cannot read profile '{path}': {e.strerror}") from None
    except ValueError as e:
        raise BnncError(f"profile '{path}' is not JSON: {e}") from None
    rows = data.get("profile") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"name", "median_ms"} <= set(r) for r in rows):
        raise BnncError(f"'{path}' holds no kernel profile (write it with `bnnc bench MODEL.onnx --profile --json`)")
    return rows


def write_report(out_path: str, report: dict[str, Any], profile_path: str | None = None) -> None:
    """Render ``report`` and write it to ``out_path`` (temporary file, then rename)."""
    from bnnc.dumps import write_file

    page = render(report, read_profile(profile_path) if profile_path else None)
    check_output_dir(out_path)
    write_file(out_path, page)


def check_output_dir(out_path: str) -> None:
    """Fail early, before any work, when ``out_path`` cannot be written."""
    import os

    from runtime.errors import BnncError

    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise BnncError(f"output directory '{directory}' does not exist")
