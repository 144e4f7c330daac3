"""Does the current code reproduce committed TAC cells of the development grid?

Usage: python benchmarks/tac_cells_reproduce.py --data-root DIR [--cells cifar10/resnet_small/badnets/seed0 ...]

A refactor of TAC must not change what it does: each named cell of docs/results/cpu is rerun
exactly as the bench ran it (the cell's own request: budget, clean set, seed) and its figures
are compared with the committed ones: flagged classes, ACC / ASR after, the pruned unit count,
the largest difference of the per-class norms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tacrecon.artifact import load_artifact
from tacrecon.commands.defend import defend_artifact
from tacrecon.data import load_dataset
from tacrecon.defenses import create_defense
from tacrecon.io import read_json

from common import markdown_table, pct, write_result

RESULTS = Path("docs/results/cpu")
DEFAULT = ["cifar10/resnet_small/none/seed0", "cifar10/resnet_small/badnets/seed0",
           "cifar10/resnet_small/blended/seed0"]


def rerun(cell: str, root: str | None) -> dict:
    """The committed record of ``cell`` (dataset/arch/attack/seedN) and the same cell run now."""
    stored = read_json(RESULTS / "cells" / cell / "tac.json")
    request = stored["request"]
    dataset, arch, attack, seed = cell.split("/")
    art = load_artifact(RESULTS / "artifacts" / dataset / arch / attack / seed)
    data = load_dataset(dataset, root=root)
    defense = create_defense("tac", request["budget"], **request["defense_params"])
    fresh = defend_artifact(defense, art, data, seed=request["seed"], clean_fraction=request["clean_fraction"],
                            clean_n=request["clean_n"])
    return {"cell": cell, "stored": stored, "fresh": fresh}


def row(r: dict) -> list:
    s, f = r["stored"], r["fresh"]
    norms = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(s["scores"]["norms"], f["scores"]["norms"]))
    same = (s["targets"] == f["targets"] and s["stats"].get("pruned") == f["stats"].get("pruned")
            and s["after"] == f["after"])
    return [r["cell"], f"{s['targets']} / {f['targets']}", f"{pct(s['after']['acc'])} / {pct(f['after']['acc'])}",
            f"{pct(s['after']['asr'])} / {pct(f['after']['asr'])}",
            f"{s['stats'].get('pruned')} / {f['stats'].get('pruned')}", f"{norms:.1e}", "yes" if same else "NO"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cells", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    results = [rerun(cell, args.data_root) for cell in args.cells]
    table = markdown_table(["cell (TAC)", "flagged: committed / now", "ACC after", "ASR after", "units pruned",
                            "largest relative norm difference", "same"], [row(r) for r in results])
    write_result("tac_cells_reproduce", {"cells": [{"cell": r["cell"], "stored_after": r["stored"]["after"],
                                                    "fresh_after": r["fresh"]["after"],
                                                    "fresh_targets": r["fresh"]["targets"]} for r in results]},
                 table + "\n")


if __name__ == "__main__":
    main()
