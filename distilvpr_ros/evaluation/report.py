"""Markdown tables for metric reports, and JSON-safe conversion of metric dicts.

* :func:`markdown_table`: rows of dicts → a GitHub markdown table (floats formatted, NaN shown as "–").
* :func:`mean_std_table`: ``method → [metrics of each seed]`` → "mean ± std" cells (sample standard
  deviation, ``ddof=1``; a single seed shows only the mean). Seeds missing a key are ignored for it.
* :func:`to_jsonable`: numpy scalars/arrays to Python, NaN/inf to ``None`` (strict JSON).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

MISSING = "–"
DEFAULT_FMT = ".3f"


def format_value(value: Any, fmt: str = DEFAULT_FMT) -> str:
    """A table cell: floats with ``fmt``, integers as they are, NaN/inf/None as "–"."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return MISSING
        return format(float(value), fmt)
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | Mapping[str, str],
                   fmt: str | Mapping[str, str] = DEFAULT_FMT) -> str:
    """A markdown table with one line per row.

    ``columns``: the keys to show, or ``key → header``; ``fmt``: a format spec for every float, or
    ``key → spec`` (keys without one use ``.3f``). Missing keys show "–".
    """
    headers = dict(columns) if isinstance(columns, Mapping) else {key: key for key in columns}
    formats = dict(fmt) if isinstance(fmt, Mapping) else {key: fmt for key in headers}
    lines = [
        "| " + " | ".join(headers.values()) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        cells = [format_value(row.get(key), formats.get(key, DEFAULT_FMT)) for key in headers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(finite):
        return float("nan"), float("nan"), 0
    std = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return float(finite.mean()), std, len(finite)


def mean_std_table(results: Mapping[str, Sequence[Mapping[str, float]]], keys: Sequence[str],
                   fmt: str = DEFAULT_FMT, method_header: str = "method") -> str:
    """Markdown table of "mean ± std" over seeds: one row per method, one column per metric key, plus
    the number of seeds."""
    rows = []
    for method, runs in results.items():
        row: dict[str, Any] = {method_header: method, "seeds": len(runs)}
        for key in keys:
            mean, std, count = mean_std([run[key] for run in runs if key in run])
            if count == 0:
                row[key] = MISSING
            elif count == 1:
                row[key] = format(mean, fmt)
            else:
                row[key] = f"{format(mean, fmt)} ± {format(std, fmt)}"
        rows.append(row)
    return markdown_table(rows, [method_header, *keys, "seeds"])


def to_jsonable(value: Any) -> Any:
    """Recursively turn numpy values into Python ones and non-finite floats into ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
