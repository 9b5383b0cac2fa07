"""SVG chart primitives and text helpers of the HTML report (bnnc.html_report)."""

from __future__ import annotations

import html
from typing import Any

CHART_TOP = 40  # title and legend above the bars


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def tail(name: str, n: int) -> str:
    """``name`` cut to ``n`` characters from the left: exporters' names differ at the end
    ("model/block_3/conv2d/Conv2D")."""
    return name if len(name) <= n else "\u2026" + name[-(n - 1):]


def num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.4g}"


def bar_chart(title: str, labels: list[str], series: list[tuple[str, str, list[float]]], unit: str,
              stacked: bool = False) -> str:
    """Horizontal bars, one group per label, one bar per series (name, colour, values), or one
    bar per label with the series end to end (``stacked``)."""
    if not labels:
        return ""
    if stacked:
        return _stacked_chart(title, labels, series, unit)
    top = max((v for _, _, vals in series for v in vals), default=0) or 1
    lw, bw, bh = 210, 420, 12
    gh = bh * len(series) + 6
    h = CHART_TOP + gh * len(labels) + 10
    parts = _chart_head(title, series, lw)
    for i, label in enumerate(labels):
        y0 = CHART_TOP + i * gh
        parts.append(f'<text x="{lw - 6}" y="{y0 + gh / 2 + 3}" class="l" text-anchor="end">{esc(tail(label, 34))}</text>')
        for k, (name, color, vals) in enumerate(series):
            w = max(vals[i] / top * bw, 0.5 if vals[i] else 0)
            y = y0 + k * bh
            parts.append(f'<rect x="{lw}" y="{y}" width="{w:.1f}" height="{bh - 2}" fill="{color}">'
                         f'<title>{esc(label)}: {esc(name)} {vals[i]:,.4g} {esc(unit)}</title></rect>'
                         f'<text x="{lw + w + 4:.1f}" y="{y + bh - 3}" class="v">{esc(num(vals[i]))}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{lw + bw + 80}" height="{h}" class="chart">'
            + "".join(parts) + "</svg>")


def _chart_head(title: str, series: list, lw: int) -> list[str]:
    """Title, then a legend line when there is more than one series."""
    parts = [f'<text x="0" y="14" class="t">{esc(title)}</text>']
    for k, (name, color, _) in enumerate(series if len(series) > 1 else []):
        parts.append(f'<rect x="{lw + 120 * k}" y="20" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lw + 14 + 120 * k}" y="29" class="l">{esc(name)}</text>')
    return parts


def _stacked_chart(title: str, labels: list[str], series: list[tuple[str, str, list[float]]], unit: str) -> str:
    sums = [sum(vals[i] for _, _, vals in series) for i in range(len(labels))]
    top = max(sums, default=0) or 1
    lw, bw, bh = 210, 420, 14
    parts = _chart_head(title, series, lw)
    for i, label in enumerate(labels):
        y, x = CHART_TOP + i * (bh + 4), float(lw)
        parts.append(f'<text x="{lw - 6}" y="{y + bh - 3}" class="l" text-anchor="end">{esc(tail(label, 34))}</text>')
        for name, color, vals in series:
            w = vals[i] / top * bw
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bh}" fill="{color}">'
                         f'<title>{esc(label)}: {esc(name)} {vals[i]:,.4g} {esc(unit)}</title></rect>')
            x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + bh - 3}" class="v">{esc(num(sums[i]))}</text>')
    h = CHART_TOP + len(labels) * (bh + 4) + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{lw + bw + 80}" height="{h}" class="chart">'
            + "".join(parts) + "</svg>")
