"""Shared by the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from tacrecon.io import atomic_write_bytes, atomic_write_json, provenance

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"

# Benchmarks run for long in the background: log every training epoch to follow them.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def write_result(name: str, record: dict[str, Any], table: str, device: str = "cpu") -> Path:
    """Write ``docs/benchmarks/<name>.json`` (record + provenance) and ``<name>.md`` (table)."""
    record = {**record, "provenance": provenance(device)}
    atomic_write_json(DOCS / f"{name}.json", record)
    prov = record["provenance"]
    header = f"Measured on {prov['device']}, torch {prov['torch']}, commit {prov['commit']}, {prov['time']}.\n\n"
    atomic_write_bytes(DOCS / f"{name}.md", (header + table).encode())
    return DOCS / f"{name}.md"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pct(value: float | None) -> str:
    """A rate as a percentage, or "-" when there is none."""
    return "-" if value is None else f"{value:.2%}"
