"""Plots shared by evaluation, Corridor, bag replay and the demo (matplotlib, no display needed).

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state), so plotting works in
threads and headless processes with any configured backend. Every function writes one PNG and returns
its path. Colours: correct = green, wrong = red, highlighted/ours = orange.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

CORRECT_COLOUR = "#2ca02c"
WRONG_COLOUR = "#d62728"
HIGHLIGHT_COLOUR = "#ff7f0e"
BASE_COLOUR = "#1f77b4"
MUTED_COLOUR = "#9e9e9e"
#: Line colours for curves that are not highlighted (matplotlib's tab10 without orange, then darker tones).
PALETTE = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#637939", "#843c39")
DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_recall_at_n(curves: Mapping[str, Sequence[float]], path: str | Path,
                     title: str = "Recall@N") -> Path:
    """Recall@N against N (N = 1, 2, ... the length of each curve), one line per named curve."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    longest = 1
    for name, values in curves.items():
        n = np.arange(1, len(values) + 1)
        longest = max(longest, len(values))
        ax.plot(n, np.asarray(values, dtype=float), marker="o", markersize=3, label=name)
    ax.set_xlabel("N (number of top database candidates)")
    ax.set_ylabel("Recall@N")
    ax.set_xlim(1, longest)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], path: str | Path,
            title: str = "Precision-recall", highlight: str | Iterable[str] | None = None) -> Path:
    """Precision against recall for each ``name → (precision, recall, auc)``; the AUC goes into the legend.

    Each curve starts at recall 0 with the precision of its first operating point, as the AUC is
    computed (``metrics.precision_recall``). Highlighted curves are drawn thick, in orange, on top.
    """
    marked = _names(highlight)
    fig = Figure(figsize=(8.6, 5.0))
    ax = fig.add_subplot()
    others = iter(PALETTE * (1 + len(curves) // len(PALETTE)))
    for name, (precision, recall, auc) in curves.items():
        mine = name in marked
        ax.plot(np.r_[0.0, np.asarray(recall, dtype=float)],
                np.r_[precision[0] if len(precision) else 1.0, np.asarray(precision, dtype=float)],
                linewidth=2.6 if mine else 1.2, zorder=3 if mine else 2,
                color=HIGHLIGHT_COLOUR if mine else next(others), label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def _names(highlight: str | Iterable[str] | None) -> set[str]:
    if highlight is None:
        return set()
    return {highlight} if isinstance(highlight, str) else set(highlight)


def plot_match_grid(pairs: Sequence[tuple[np.ndarray, np.ndarray, bool, str]], path: str | Path,
                    title: str = "Query → top-1 match", pairs_per_row: int = 2) -> Path:
    """Query images beside their retrieved match; the match has a green (correct) or red (wrong) frame.

    ``pairs``: ``(query_rgb, match_rgb, ok, caption)`` per example (uint8 RGB images of any size).
    """
    rows = max(1, math.ceil(len(pairs) / pairs_per_row))
    cols = 2 * pairs_per_row
    height, width = (pairs[0][0].shape[:2] if pairs else (3, 4))
    panel_w = 2.4
    panel_h = panel_w * height / width + 0.45
    fig = Figure(figsize=(panel_w * cols, panel_h * rows + 0.5))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (query, match, ok, caption) in enumerate(pairs):
        row, col = divmod(k, pairs_per_row)
        q_ax, m_ax = axes[row, 2 * col], axes[row, 2 * col + 1]
        q_ax.imshow(query)
        q_ax.set_title("query", fontsize=9)
        m_ax.imshow(match)
        colour = CORRECT_COLOUR if ok else WRONG_COLOUR
        m_ax.set_title(f"{'correct' if ok else 'wrong'}: {caption}", fontsize=9, color=colour)
        m_ax.set_axis_on()
        m_ax.set_xticks([])
        m_ax.set_yticks([])
        for spine in m_ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
    fig.suptitle(title)
    return _save(fig, path)


def plot_trajectory(xy: np.ndarray, edges: Sequence[tuple[int, int, bool]], path: str | Path,
                    db_xy: np.ndarray | None = None, title: str = "Trajectory and loop closures") -> Path:
    """A planar trajectory with loop edges coloured correct (green) / wrong (red).

    ``edges``: ``(i, j, ok)`` with ``i`` indexing ``xy`` and ``j`` indexing ``db_xy`` (the map's keyframes)
    when given, otherwise ``xy`` itself (loops within one run).
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    targets = xy if db_xy is None else np.asarray(db_xy, dtype=float).reshape(-1, 2)
    fig = Figure(figsize=(6.4, 6.0))
    ax = fig.add_subplot()
    handles = []
    if db_xy is not None:
        ax.plot(targets[:, 0], targets[:, 1], color=MUTED_COLOUR, linewidth=3, alpha=0.6)
        handles.append(Line2D([], [], color=MUTED_COLOUR, linewidth=3, alpha=0.6, label="map (database)"))
    ax.plot(xy[:, 0], xy[:, 1], color=BASE_COLOUR, linewidth=1.2)
    handles.append(Line2D([], [], color=BASE_COLOUR, linewidth=1.2, label="trajectory (queries)"))
    if len(xy):
        ax.plot(*xy[0], marker="o", color=BASE_COLOUR)
        handles.append(Line2D([], [], marker="o", linestyle="", color=BASE_COLOUR, label="start"))
    for ok, colour, word in ((True, CORRECT_COLOUR, "correct"), (False, WRONG_COLOUR, "wrong")):
        chosen = [(i, j) for i, j, good in edges if bool(good) == ok]
        for i, j in chosen:
            ax.plot([xy[i, 0], targets[j, 0]], [xy[i, 1], targets[j, 1]], color=colour, linewidth=1.0, alpha=0.8)
        handles.append(Line2D([], [], color=colour, label=f"{word} loop ({len(chosen)})"))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(handles=handles, loc="best", fontsize="small")
    return _save(fig, path)


def plot_bars(values: Mapping[str, float], path: str | Path, highlight: str | Iterable[str] | None = None,
              title: str = "", xlabel: str = "value") -> Path:
    """Horizontal bars in the given order (first on top), highlighted names in orange, values printed."""
    marked = _names(highlight)
    names = list(values)
    numbers = np.array([values[name] for name in names], dtype=float)
    fig = Figure(figsize=(6.4, 0.6 + 0.38 * max(len(names), 1)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    colours = [HIGHLIGHT_COLOUR if name in marked else BASE_COLOUR for name in names]
    ax.barh(y, numbers, color=colours)
    for yi, value in zip(y, numbers):
        ax.text(value, yi, f" {value:.3f}", va="center", fontsize=9)
    ax.set_yticks(y, [f"{name} (ours)" if name in marked else name for name in names])
    ax.invert_yaxis()
    finite = numbers[np.isfinite(numbers)]
    ax.set_xlim(0, max(1.0, float(finite.max()) if len(finite) else 1.0) * 1.12)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def plot_latency(latency_ms: Sequence[float], path: str | Path, title: str = "End-to-end latency") -> Path:
    """Histogram of per-frame latencies (ms) with the median and the 99th percentile marked."""
    values = np.asarray(latency_ms, dtype=float)
    values = values[np.isfinite(values)]
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    if len(values):
        ax.hist(values, bins=min(40, max(5, len(values) // 3)), color=BASE_COLOUR, alpha=0.85)
        for q, colour in ((50, CORRECT_COLOUR), (99, WRONG_COLOUR)):
            v = float(np.percentile(values, q))
            ax.axvline(v, color=colour, linewidth=1.6, label=f"p{q} {v:.1f} ms")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no answered frames", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)
