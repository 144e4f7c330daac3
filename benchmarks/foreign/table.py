"""Write ``docs/benchmarks/foreign_family.md``: the trained models of the foreign family, read
from their ``model.json`` files, in plan order (models not in the plan last, by name).

    python benchmarks/foreign/table.py
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

DOC = ROOT / "docs" / "benchmarks" / "foreign_family.md"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def recipe(r: dict) -> str:
    return f"{r['optimizer']} {r['schedule']}, ls {r['label_smoothing']:g}, {r['epochs']} ep"


def render(records: list[dict], planned: list[dict]) -> str:
    done = {r["name"] for r in records}
    lines = [
        "# Foreign model family",
        "",
        "Models trained by `benchmarks/foreign/` (its own data loading, nets, triggers and training",
        "loop; nothing from `tacrecon`), to tune defenses on models the project's own code did not",
        "train. ACC: clean test accuracy (%). ASR: share of the non-target test images that the model",
        "puts in the target class once triggered (%). Minutes: wall time of the whole run (data, training,",
        "evaluation) on one CPU thread. Written by `python benchmarks/foreign/table.py` from the",
        "models' `model.json` files; see `benchmarks/foreign/README.md`.",
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


def collect(models: Path) -> list[dict]:
    order = {s["name"]: i for i, s in enumerate(plan.plan())}
    records = [json.loads(p.read_text()) for p in sorted(models.glob("*/model.json"))]
    return sorted(records, key=lambda r: (order.get(r["name"], len(order)), r["name"]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", type=Path, default=plan.MODELS)
    p.add_argument("--out", type=Path, default=DOC)
    a = p.parse_args(argv)
    text = render(collect(a.models), plan.plan())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(f".{a.out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
