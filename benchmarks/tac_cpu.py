"""TAC on the CPU-protocol attack artifacts: detection statistics, then repair.

Usage: python benchmarks/tac_cpu.py --data-root DIR [--runs runs/cpu] [--seed 0] [--set key=value ...]

For every complete artifact ``<runs>/<dataset>/resnet_small/<attack>/seed<seed>``, runs
``tacrecon repair`` with the default TAC (5% clean training images drawn with the seed, disjoint
from the poisoned ones) and writes ``<runs>/tac/<dataset>/<attack>/seed<seed>/repair.json``;
finished cells are reused, so a killed run resumes. The table gives the flagged class, the
anomaly index and p-value of the target's norm, and ACC / ASR before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tacrecon.cli import parse_sets
from tacrecon.commands.repair import run_repair
from tacrecon.io import read_json

from common import markdown_table, pct, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    tac = parse_sets(args.set)
    rows, cells = [], {}
    for art in sorted((args.runs / args.dataset / "resnet_small").glob(f"*/seed{args.seed}/attack.json")):
        attack = art.parent.parent.name
        out = args.runs / "tac" / args.dataset / attack / f"seed{args.seed}"
        if not (out / "repair.json").is_file():
            run_repair(str(art.parent), args.dataset, out, config=tac, root=args.data_root,
                       device=torch.device("cpu"), seed=args.seed)
        r = read_json(out / "repair.json")
        # a repair.json of the old run_repair holds the scan under "scan" and the run's wall time in "seconds"
        scan, target = r.get("scores", r.get("scan")), read_json(art)["attack_config"]["target"]
        seconds = r.get("total_seconds", r["seconds"])
        cells[attack] = {"scan": scan, "before": r["before"], "after": r["after"], "der": r.get("der"),
                         "repaired": r["repaired"], "seconds": seconds}
        rows.append([attack, scan["target"] if scan["backdoored"] else "-", f"{scan['anomaly_index'][target]:.2f}",
                     f"{max(scan['anomaly_index']):.2f}", f"{scan['p_value']:.3g}", pct(r["before"]["acc"]),
                     pct(r["after"]["acc"]), pct(r["before"].get("asr")), pct(r["after"].get("asr")),
                     "-" if r.get("der") is None else f"{r['der']:.3f}", f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    table = markdown_table(["attack", "flagged", "index of target", "max index", "p (min norm)", "ACC before",
                            "ACC after", "ASR before", "ASR after", "DER", "seconds"], rows)
    write_result(f"tac_cpu_{args.dataset}_seed{args.seed}", {"dataset": args.dataset, "seed": args.seed,
                                                            "tac_overrides": tac, "cells": cells}, table)


if __name__ == "__main__":
    main()
