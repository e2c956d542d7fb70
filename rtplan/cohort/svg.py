"""Small inline SVG charts for the cohort report: horizontal box plots and grouped bars.

Written by hand rather than with matplotlib so that a report of hundreds of panels is
made in well under a second; the output is plain SVG markup to put inside an HTML page
(no scripts, no external references; inline SVG in HTML needs no namespace).

Box plots follow the usual (Tukey) convention: the box spans the quartiles, the line
inside it is the median, the whiskers reach the most extreme values within 1.5 times
the interquartile range of the box, and values beyond are drawn as dots.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["box_stats", "nice_ticks", "svg_bars", "svg_boxplot"]

_WIDTH = 490
_LABEL_W = 200
_RIGHT = 26
_ROW_H = 20
_TOP = 22
_BOTTOM = 26
_COLOURS = ("#4878a8", "#e49444", "#6a9f58", "#d1615d")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``.

    Examples
    --------
    >>> nice_ticks(0.0, 9.3)
    [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    >>> nice_ticks(5.0, 5.0)
    [4.0, 4.5, 5.0, 5.5, 6.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1.0):
        pad = max(abs(lo) * 0.1, 1.0)
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)
    start = math.floor(lo / step) * step
    stop = math.ceil(hi / step) * step
    count = max(1, round((stop - start) / step))
    digits = max(0, 2 - math.floor(math.log10(step)))
    return [round(start + i * step, digits) for i in range(count + 1)]


def box_stats(values: Sequence[float]) -> tuple[float, float, float, float, float, list[float]]:
    """Quartiles, whisker ends and outliers of ``values`` (finite values only).

    Returns
    -------
    (low whisker, q1, median, q3, high whisker, outliers)

    Examples
    --------
    >>> box_stats([1.0, 2.0, 3.0, 4.0, 100.0])[:5]
    (1.0, 2.0, 3.0, 4.0, 4.0)
    """
    a = np.asarray([v for v in values if math.isfinite(v)], float)
    q1, med, q3 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    iqr = q3 - q1
    inside = a[(a >= q1 - 1.5 * iqr) & (a <= q3 + 1.5 * iqr)]
    lo = float(inside.min()) if inside.size else q1
    hi = float(inside.max()) if inside.size else q3
    outliers = [float(v) for v in a if v < lo or v > hi]
    return lo, q1, med, q3, hi, outliers


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def _clip_label(text: str, max_chars: int = 26) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


def svg_boxplot(
    series: Sequence[tuple[str, Sequence[float]]],
    title: str,
    *,
    ref_x: float | None = None,
    ref_label: str = "limit",
) -> str:
    """One horizontal box-plot panel, one row per series.

    Parameters
    ----------
    series : sequence of (label, values)
        Row label and its values (NaN and infinite values are ignored); rows without
        values are shown empty.
    title : str
        Panel title (e.g. ``"Rectum V40Gy [%]"``).
    ref_x : float, optional
        A reference value drawn as a dashed vertical line (a constraint limit, or 0).
    ref_label : str
        ``"limit"`` (red line) or anything else (grey line).

    Returns
    -------
    str
        An ``<svg>`` element.
    """
    rows = [(label, [v for v in vals if math.isfinite(v)]) for label, vals in series]
    every = [v for _, vals in rows for v in vals] + ([ref_x] if ref_x is not None else [])
    ticks = nice_ticks(min(every), max(every)) if every else [0.0, 1.0]
    x0, x1 = ticks[0], ticks[-1]
    plot_w = _WIDTH - _LABEL_W - _RIGHT
    height = _TOP + _ROW_H * max(len(rows), 1) + _BOTTOM

    def sx(v: float) -> float:
        return _LABEL_W + (v - x0) / (x1 - x0) * plot_w

    parts = [
        f'<svg width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="4" y="14" font-size="12" font-weight="bold">{_e(title)}</text>',
    ]
    y_axis = _TOP + _ROW_H * max(len(rows), 1)
    for t in ticks:
        x = sx(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{y_axis}" stroke="#e4e4e4"/>'
            f'<text x="{x:.1f}" y="{y_axis + 14}" font-size="10" text-anchor="middle">'
            f"{_fmt(t)}</text>"
        )
    if ref_x is not None:
        colour = "#c00000" if ref_label == "limit" else "#777777"
        x = sx(ref_x)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP - 2}" x2="{x:.1f}" y2="{y_axis}" stroke="{colour}" '
            'stroke-dasharray="4 3" stroke-width="1.2"/>'
        )
    for n, (label, vals) in enumerate(rows):
        yc = _TOP + _ROW_H * n + _ROW_H / 2
        text = f"{_clip_label(label)} (n={len(vals)})"
        parts.append(
            f'<text x="{_LABEL_W - 6}" y="{yc + 4:.1f}" font-size="10" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(text)}</text>"
        )
        if vals:
            parts.append(_box(vals, yc, sx, _COLOURS[0]))
    parts.append(
        f'<line x1="{_LABEL_W}" y1="{y_axis}" x2="{_WIDTH - _RIGHT}" y2="{y_axis}" '
        'stroke="#888"/></svg>'
    )
    return "".join(parts)


def _box(vals: Sequence[float], yc: float, sx: Callable[[float], float], colour: str) -> str:
    """The marks of one box (``sx`` maps a value to an x position)."""
    lo, q1, med, q3, hi, outliers = box_stats(vals)
    h = _ROW_H * 0.6
    top = yc - h / 2
    out = [
        f'<line x1="{sx(lo):.1f}" y1="{yc:.1f}" x2="{sx(q1):.1f}" y2="{yc:.1f}" stroke="#333"/>',
        f'<line x1="{sx(q3):.1f}" y1="{yc:.1f}" x2="{sx(hi):.1f}" y2="{yc:.1f}" stroke="#333"/>',
        f'<rect x="{sx(q1):.1f}" y="{top:.1f}" width="{max(sx(q3) - sx(q1), 1.0):.1f}" '
        f'height="{h:.1f}" fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>',
        f'<line x1="{sx(med):.1f}" y1="{top:.1f}" x2="{sx(med):.1f}" y2="{top + h:.1f}" '
        'stroke="#111" stroke-width="2"/>',
    ]
    out += [
        f'<circle cx="{sx(v):.1f}" cy="{yc:.1f}" r="2" fill="none" stroke="#333"/>'
        for v in outliers
    ]
    return "".join(out)


def svg_bars(
    groups: Sequence[tuple[str, Sequence[float]]], legend: Sequence[str], y_label: str
) -> str:
    """A grouped vertical bar chart.

    Parameters
    ----------
    groups : sequence of (label, values)
        One group of bars per label, one bar per legend entry.
    legend : sequence of str
        Names of the bars in each group.
    y_label : str
        The value axis.

    Returns
    -------
    str
        An ``<svg>`` element.
    """
    width, height, left, bottom, top = 470, 230, 46, 30, 26
    top_v = max([v for _, vals in groups for v in vals] + [1.0])
    ticks = nice_ticks(0.0, top_v)
    y1 = ticks[-1]
    plot_h = height - top - bottom
    plot_w = width - left - 10
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.7 / max(len(legend), 1)

    def sy(v: float) -> float:
        return top + plot_h * (1.0 - v / y1)

    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(y_label)}">'
    ]
    for t in ticks:
        parts.append(
            f'<line x1="{left}" y1="{sy(t):.1f}" x2="{width - 10}" y2="{sy(t):.1f}" '
            f'stroke="#e4e4e4"/><text x="{left - 4}" y="{sy(t) + 3:.1f}" font-size="10" '
            f'text-anchor="end">{_fmt(t)}</text>'
        )
    for g, (label, vals) in enumerate(groups):
        gx = left + g * group_w + group_w * 0.15
        for b, v in enumerate(vals):
            x = gx + b * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{bar_w * 0.95:.1f}" '
                f'height="{sy(0.0) - sy(v):.1f}" fill="{_COLOURS[b % len(_COLOURS)]}">'
                f"<title>{_e(legend[b])}: {v:.1f}</title></rect>"
            )
        parts.append(
            f'<text x="{left + (g + 0.5) * group_w:.1f}" y="{height - bottom + 14}" '
            f'font-size="11" text-anchor="middle">{_e(label)}</text>'
        )
    for b, name in enumerate(legend):
        x = left + 8 + b * 120
        parts.append(
            f'<rect x="{x}" y="6" width="10" height="10" fill="{_COLOURS[b % len(_COLOURS)]}"/>'
            f'<text x="{x + 14}" y="15" font-size="11">{_e(name)}</text>'
        )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{_e(y_label)}</text></svg>'
    )
    return "".join(parts)
