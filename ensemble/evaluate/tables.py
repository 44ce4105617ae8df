"""Metric tables as text: a plain-text one for the console, markdown ones for the reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cell", "format_table", "markdown_table"]

Rows = Mapping[str, Mapping[str, Any]]


def cell(value: Any) -> str:
    """A table cell: integers (byte counts, row counts) as integers, other numbers to 4
    decimals, a missing value (None) as a dash, anything else as its text."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def format_table(rows: Rows) -> str:
    """A plain-text table: one row per model, one column per metric (the first row's), each
    column as wide as its name."""
    metric_names = list(next(iter(rows.values())))
    first = max(14, *(len(name) + 2 for name in rows))
    widths = [max(10, len(m) + 2) for m in metric_names]
    lines = [f"{'model':<{first}}" + "".join(f"{m:>{w}}" for m, w in zip(metric_names, widths, strict=True))]
    for name, values in rows.items():
        cells = (cell(values.get(m)) for m in metric_names)
        lines.append(f"{name:<{first}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def markdown_table(rows: Rows, first: str = "model", metrics: list[str] | None = None) -> list[str]:
    """Markdown table lines: one row per name, one column per metric (default: the first row's);
    cells as `cell` writes them (a metric a row lacks: a dash)."""
    metrics = metrics or list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(values.get(m)) for m in metrics) + " |")
    return lines
