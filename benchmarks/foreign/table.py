"""Write ``docs/benchmarks/foreign_family.md`` (``--part holdout``: ``foreign_holdout.md``, and so on): the
trained models of one part of the foreign family, read from their ``model.json`` files, in plan
order (models not in the plan last, by name).

    python benchmarks/foreign/table.py [--part holdout]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.foreign import plan  # noqa: E402

DOCS = {part: ROOT / "docs" / "benchmarks" / ("foreign_family.md" if part == "tuning" else f"foreign_{part}.md")
        for part in plan.PARTS}
TITLES = {"tuning": "Foreign model family", "holdout": "Foreign model family: the held-out part",
          "holdout2": "Foreign model family: the second held-out part"}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def recipe(r: dict) -> str:
    return f"{r['optimizer']} {r['schedule']}, ls {r['label_smoothing']:g}, {r['epochs']} ep"


def render(records: list[dict], planned: list[dict], part: str = "tuning") -> str:
    done = {r["name"] for r in records}
    lines = [
        f"# {TITLES[part]}",
        "",
        "Models trained by `benchmarks/foreign/` (its own data loading, nets, triggers and training",
        "loop; nothing from `tacrecon`), to tune defenses on models the project's own code did not",
        "train. ACC: clean test accuracy (%). ASR: share of the non-target test images that the model",
        "puts in the target class once triggered (%). Minutes: wall time of the whole run (data, training,",
        "evaluation) on one CPU thread. Written by `python benchmarks/foreign/table.py` from the",
        "models' `model.json` files; see `benchmarks/foreign/README.md`.",
        *(["", "These models are kept out of tuning: each TAC revision is checked on them once, after it",
            "was chosen on the tuning part."] if part != "tuning" else []),
        "",
        f"{len(records)} of {len(planned)} planned models trained.",
        "",
        "| name | data | arch | trigger | target | rate | recipe | ACC | ASR | minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        trigger = "clean" if r["trigger"] is None else r["trigger"]
        rate = "-" if r["trigger"] is None else f"{100 * r['rate']:g}%"
        target = "-" if r["target"] is None else str(r["target"])
        name = r["name"] + (f" (subset of {r['limit']})" if r.get("limit") else "")
        lines.append(f"| {name} | {r['dataset']} | {r['arch']} | {trigger} | {target} | {rate} | "
                     f"{recipe(r['recipe'])} | {pct(r['acc'])} | {pct(r['asr'])} | {r['seconds'] / 60:.1f} |")
    todo = [s["name"] for s in planned if s["name"] not in done]
    if todo:
        lines += ["", "Not trained yet, in plan order: " + ", ".join(f"`{n}`" for n in todo) + "."]
    return "\n".join(lines) + "\n"


def collect(models: Path, part: str = "tuning") -> list[dict]:
    order = {s["name"]: i for i, s in enumerate(plan.plan(part))}
    records = [json.loads(p.read_text()) for p in sorted(models.glob("*/model.json"))]
    return sorted(records, key=lambda r: (order.get(r["name"], len(order)), r["name"]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--part", choices=sorted(plan.PARTS), default="tuning")
    p.add_argument("--models", type=Path, help="the models' folder (default: the part's)")
    p.add_argument("--out", type=Path, help="the table (default: the part's)")
    a = p.parse_args(argv)
    models, out = a.models or plan.PARTS[a.part][2], a.out or DOCS[a.part]
    text = render(collect(models, a.part), plan.plan(a.part), a.part)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
