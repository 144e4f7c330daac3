"""Copy a bench report's tables and comparison paragraphs into a section of the README, so the two cannot drift.

    python scripts/readme_tables.py "## Results" docs/results/cpu/report.md
    python scripts/readme_tables.py "## Robustness" docs/results/robustness/report.md
    python scripts/readme_tables.py "## Confirmatory" docs/results/confirm/report.md

A two-part report (``tacrecon report DIR --development DEV``) gives its confirmatory part only.

Each table of the README section is replaced by the report's table with the same first three
header cells, cut after the first defense's column, which counts as any defense's (a grid that
has run one more defense adds a column to its detection and removal-bar tables), taken in the
report's order (the CIFAR-10 table before the GTSRB one), and each paragraph that starts with
"In words:" by the report's paragraph of that kind in the same place (the first by the first).
The other prose around the tables is left as it is: reread it after the numbers change.
``tests/test_readme.py`` checks that every table and every such paragraph of those sections is
one of the report's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tacrecon.bench.report import confirmatory_part, table_blocks, words_lines
from tacrecon.bench.tables import family
from tacrecon.defenses import DEFENSES

ROOT = Path(__file__).resolve().parent.parent


def header_key(block: str) -> tuple[str, ...]:
    """A table's first three header cells, cut after its first defense column (``none``, ``tac``,
    ``nc-b683317b``, ...), which stands as ``*``: the columns of defenses come and go as a grid runs."""
    key: list[str] = []
    for cell in (c.strip() for c in block.splitlines()[0].strip("|").split("|")[:3]):
        if cell == "none" or family(cell) in DEFENSES.names():
            return (*key, "*")
        key.append(cell)
    return tuple(key)


def replace_tables(section: str, report: str) -> str:
    """``section`` with each of its tables replaced by the report's table of the same header."""
    unused = table_blocks(report)
    for block in table_blocks(section):
        match = next((b for b in unused if header_key(b) == header_key(block)), None)
        if match is None:
            raise SystemExit(f"no table of the report starts like the README's {header_key(block)}")
        unused.remove(match)
        section = section.replace(block, match, 1)
    words = words_lines(report)
    for i, line in enumerate(words_lines(section)):
        if i >= len(words):
            raise SystemExit(f"the README's section has more 'In words:' paragraphs than the report ({len(words)})")
        section = section.replace(line, words[i], 1)
    return section


def main(title: str, report_path: str) -> None:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    start = readme.index(title)
    end = readme.index("\n## ", start + 1)
    section = replace_tables(readme[start:end], confirmatory_part((ROOT / report_path).read_text()))
    readme_path.write_text(readme[:start] + section + readme[end:])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
