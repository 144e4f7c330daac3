"""Train the foreign family's plan in order, one model at a time, skipping finished models.

    mkdir -p logs && OMP_NUM_THREADS=1 nohup setsid python benchmarks/foreign/run_plan.py > logs/foreign_train.log 2>&1 &

A model is finished when its folder under ``benchmarks/foreign/models/`` holds ``model.json``
(written last, atomically), so stopping and rerunning this script resumes where it stopped. A
model whose training fails is logged and the plan goes on. After each model the table
``docs/benchmarks/foreign_family.md`` is regenerated.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.foreign import plan, table, train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="train only these model names")
    p.add_argument("--first", type=int, help="go through the first N models of the plan only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dry-run", action="store_true", help="list what would be trained")
    p.add_argument("--part", choices=sorted(plan.PARTS), default="tuning",
                   help="which part of the family (holdout: kept out of tuning, in holdout/)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    specs = plan.plan(a.part)[:a.first] if a.first else plan.plan(a.part)
    folder = plan.PARTS[a.part][2]
    if a.only:
        specs = [s for s in specs if s["name"] in set(a.only)]
    for i, spec in enumerate(specs, 1):
        out = folder / spec["name"]
        done = (out / "model.json").is_file()
        if a.dry_run:
            print(f"{i:2d} {'done' if done else 'todo'} {spec['name']}")
            continue
        if done:
            train.log(f"[{i}/{len(specs)}] {spec['name']}: done, skipped")
            continue
        train.log(f"[{i}/{len(specs)}] {spec['name']}")
        try:
            train.train_model({k: v for k, v in spec.items() if k != "name"}, out)
        except Exception:  # noqa: BLE001 - one failed model must not stop the plan
            train.log(f"{spec['name']} FAILED:\n{traceback.format_exc()}")
            continue
        table.main(["--part", a.part])
    train.log("plan finished")


if __name__ == "__main__":
    main()
