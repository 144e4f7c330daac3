"""``tacrecon report DIR``: the grid's table (attacks x defenses, mean +- std over seeds), plots.

Every cell shows ``ACC / ASR`` after the defense (percent); the best defense of each attacked row
(highest mean DER over the row's seeds, above 0.5) is in bold. A second table gives the
detection of the defenses that flag a class (TAC, NC): on backdoored models how often the attack's
targets were all flagged, on clean models how often any class was (false positives); where a model
has several backdoors, ASR is the largest of theirs and a table gives each one's. A third sets TAC
against the best other defense of each row (DER, margin, wins / loses), and a paragraph below it
says the same in words with TAC's cost against each other defense's (one such table for each
setting of TAC in the grid, ``tac-<hash>`` too; TAC's settings are not each other's rivals); a fourth counts the
attacked models each defense brings under the removal bar; a fifth, the attacked models that meet
the attack bar (ASR >= 90% within 2 points of the clean model's accuracy) and what the others
miss; a sixth gives the cost (hours of
cells and attack models per defense). Files written into
DIR: report.md, report.csv, report.html (one self-contained page with the plots inlined),
asr_vs_acc_<dataset>_<arch>.png, der_vs_minutes_<dataset>_<arch>.png (benefit against cost, one
panel per attack), plots/<defense>_*.png (per-class norms of the scans). Each table of a data set
ends with every defense's median minutes, and the comparison gives both sides' minutes, so a claim
about cost comes from the table. A defense, or an attack, whose cells were made by more than one
revision of its code is named under the tables.

``tacrecon report DIR --development DEV`` writes DIR's report in two labelled parts: DIR, the
confirmatory grid (the headline), and below it DEV's tables, the development grid on which the
method's choices were made.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from tacrecon.bench.cells import FAILED_SUFFIX
from tacrecon.bench.figures import write_figures
from tacrecon.bench.rows import Row, load_rows, order
from tacrecon.bench.tables import (
    WORDS,
    attack_bar,
    cost,
    detection,
    family,
    legend,
    mixed_revisions,
    per_backdoor,
    removal_bar,
    tables,
    versus,
)
from tacrecon.errors import TacreconError
from tacrecon.io import atomic_write_bytes, read_json

Parts = tuple[list[Row], str, list[dict[str, Any]], str | None]  # what :func:`report_parts` gives


def markdown(table: dict[str, Any]) -> str:
    lines = [f"### {table['title']}", "", "| " + " | ".join(table["header"]) + " |",
             "|" + "|".join("---" for _ in table["header"]) + "|"]
    for row, best in zip(table["body"], table["bold"]):
        cells = [f"**{c}**" if i - 2 in best else c for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + (["", table["words"]] if table.get("words") else []))


def table_blocks(text: str) -> list[str]:
    """Every Markdown table of ``text`` (consecutive lines that start with ``|``), as written by
    :func:`markdown`: what a README copies from a report."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def words_lines(text: str) -> list[str]:
    """Every comparison paragraph of ``text`` (a line that starts with :data:`WORDS`), in order."""
    return [line for line in text.splitlines() if line.startswith(WORDS)]


def html_table(table: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table["header"])
    rows = []
    for row, best in zip(table["body"], table["bold"]):
        cells = "".join(f"<td><b>{html.escape(c)}</b></td>" if i - 2 in best
                        else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row))
        rows.append(f"<tr>{cells}</tr>")
    words = f"<p>{html.escape(table['words'])}</p>" if table.get("words") else ""
    return f"<h3>{html.escape(table['title'])}</h3><table><tr>{head}</tr>{''.join(rows)}</table>{words}"


def html_part(note: str, tables: list[dict[str, Any]], names: str | None) -> str:
    return (f"<p>{html.escape(note)}</p>" + "".join(html_table(t) for t in tables)
            + (f"<p>{html.escape(names)}</p>" if names else ""))


def development_html(development: Path, parts: Parts) -> str:
    """The development grid's part of the page: its tables (its figures stay in its own report)."""
    _, note, tables, names = parts
    return (f"<h2>Development grid: {html.escape(grid_name(development))} ({html.escape(DEVELOPMENT_NOTE)})</h2>"
            + html_part(note, tables, names))


def csv_text(rows: list[Row]) -> str:
    buf = io.StringIO()
    fields = ["dataset", "arch", "attack", "seed", "defense", "acc_before", "asr_before", "acc", "asr", "ra", "der",
              "target", "attack_target", "seconds"]
    writer = csv.writer(buf)
    writer.writerow([*fields, "asr_per_backdoor"])
    for r in rows:
        each = ";".join(f"{name}={value}" for name, value in (r.asr_per_backdoor or {}).items())
        writer.writerow([*(getattr(r, f) for f in fields), each])
    return buf.getvalue()


def report_parts(out: Path) -> Parts:
    """The finished cells under ``out``, the report's opening note, its tables and its closing names."""
    rows, failed = load_rows(out)
    if not rows:
        raise TacreconError(f"{out}: no finished cell to report" + (f" ({failed} failed)" if failed else ""))
    blocks = tables(rows)
    found = detection(rows)
    focuses = order({r.defense for r in rows if family(r.defense) == "tac"}, ["tac"])
    extra = [t for t in (found, per_backdoor(rows), *(versus(rows, f) for f in focuses), removal_bar(rows),
                         attack_bar(rows), cost(rows)) if t]
    names = " ".join(t for t in (legend(rows), mixed_revisions(rows)) if t) or None
    note = (f"{len(rows)} finished cells" + (f", {failed} failed (see cells/**/*{FAILED_SUFFIX})" if failed else "")
            + ". Each entry: ACC / ASR after the defense (%), mean±std over seeds ([n]: over only n of the row's "
            "seeds, the rest not run yet); bold: the highest DER of the row (above 0.5, over all its seeds).")
    return rows, note, blocks + extra, names


def report_markdown(note: str, tables: list[dict[str, Any]], names: str | None) -> str:
    """The report as Markdown (``report.md``): the note, every table, the names."""
    return "\n\n".join([note, *(markdown(t) for t in tables), *([names] if names else [])]) + "\n"


DEVELOPMENT_HEADING = "## Development grid: "  # where a two-part report's development part starts
DEVELOPMENT_NOTE = ("the grid on which the method's choices were made (every revision of it was looked at "
                    "on these cells): development figures, not the headline")


def grid_name(out: Path) -> str:
    """The bench config's name recorded in ``out/bench.json`` (the folder's name without one)."""
    path = out / "bench.json"
    try:
        return str(read_json(path)["config"]["name"]) if path.exists() else out.name
    except (KeyError, TypeError):
        return out.name


def development_parts(development: str | Path | None) -> tuple[Path, Parts] | None:
    """The development folder and its :func:`report_parts` (None without one)."""
    return None if development is None else (Path(development), report_parts(Path(development)))


def confirmatory_part(text: str) -> str:
    """A two-part ``report.md``'s confirmatory part (what comes before its development grid); a
    one-part report whole."""
    return text.split(f"\n{DEVELOPMENT_HEADING}", 1)[0]


def report_text(out: str | Path, development: str | Path | None = None) -> str:
    """``report.md`` of ``out``; with ``development``, in two labelled parts: ``out`` (the
    confirmatory grid, the headline) and below it the development grid's tables."""
    out = Path(out)
    dev = development_parts(development)
    return compose_markdown(out, report_parts(out), dev)


def compose_markdown(out: Path, parts: Parts, dev: tuple[Path, Parts] | None) -> str:
    """:func:`report_text` from the parts already read (``dev``: the development folder and its parts)."""
    _, note, tables, names = parts
    text = report_markdown(note, tables, names)
    if dev is None:
        return text
    folder, (_, dev_note, dev_tables, dev_names) = dev
    return (f"## Confirmatory grid: {grid_name(out)}\n\n{text}\n"
            f"{DEVELOPMENT_HEADING}{grid_name(folder)} ({DEVELOPMENT_NOTE})\n\n"
            + report_markdown(dev_note, dev_tables, dev_names))


def write_report(out: str | Path, development: str | Path | None = None) -> dict[str, str]:
    """Write the report files into ``out`` and return the texts by format (md, html, csv); with
    ``development`` (another bench folder), the report has two parts, as :func:`report_text`."""
    out = Path(out)
    if development is not None and Path(development).resolve() == out.resolve():
        raise TacreconError(f"--development {development}: the development grid must be another folder than {out}")
    parts = report_parts(out)
    rows, note, all_tables, names = parts
    dev = development_parts(development)
    md = compose_markdown(out, parts, dev)
    images = "".join(f"<figure><img src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                     f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, b in write_figures(out, rows))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>tacrecon report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}figure{display:inline-block;margin:1em}</style></head><body>"
            "<h2>tacrecon benchmark report</h2>" + html_part(note, all_tables, names) + images
            + (development_html(*dev) if dev is not None else "") + "</body></html>")
    texts = {"md": md, "html": page, "csv": csv_text(rows)}
    for fmt_name, text in texts.items():
        atomic_write_bytes(out / f"report.{fmt_name}", text.encode())
    return texts
