"""Choose TAC's detection rule on tuning seeds: digits models, clean and backdoored, seeds 100+.

Usage: python benchmarks/tac_tuning_digits.py [--seeds 100 ... 109] [--attacks none badnets blended]
       [--runs runs/tuning] [--clean-fraction 0.2]

Trains (or reuses) a resnet_small artifact per attack and seed with the digits recipe, scans it
with TAC (scan only), and tabulates, for each candidate rule, the false-positive rate on the clean
models and the detection rate (target flagged first) on the backdoored ones. Protocol rule:
thresholds are chosen here, never on the reported seeds 0-2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tacrecon.artifact import run_attack
from tacrecon.commands.scan import run_scan

from common import markdown_table, write_result

RULES = [("mad", 2.0, None), ("mad", 3.0, None), ("mad", 4.0, None), ("pvalue", None, 0.05), ("pvalue", None, 0.01)]


def flagged(scan: dict, rule: str, threshold: float | None, alpha: float | None) -> int | None:
    """The class a rule flags first, from the recorded statistics (None: model called clean)."""
    index = torch.tensor(scan["anomaly_index"])
    if rule == "mad":
        return int(index.argmax()) if float(index.max()) > threshold else None
    return int(torch.tensor(scan["norms"]).argmin()) if scan["p_value"] < alpha else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 110)))
    parser.add_argument("--attacks", nargs="+", default=["none", "badnets", "blended"])
    parser.add_argument("--runs", type=Path, default=Path("runs/tuning"))
    parser.add_argument("--clean-fraction", type=float, default=0.2)
    args = parser.parse_args()
    scans = {a: [] for a in args.attacks}
    for seed in args.seeds:
        for attack in args.attacks:
            out = args.runs / "digits" / attack / f"seed{seed}"
            run_attack(attack, "digits", "resnet_small", out, seed=seed, train={"progress": False})
            scan = run_scan(str(out), "digits", device=torch.device("cpu"), seed=seed,
                            clean_fraction=args.clean_fraction)["scores"]
            scans[attack].append({k: scan[k] for k in ("norms", "anomaly_index", "p_value")})
            print(attack, seed, round(max(scan["anomaly_index"]), 2), round(scan["p_value"], 4), flush=True)
    rows = []
    for rule, threshold, alpha in RULES:
        name = f"{rule} > {threshold}" if rule == "mad" else f"p < {alpha}"
        row = [name]
        for attack in args.attacks:
            hits = [flagged(s, rule, threshold, alpha) for s in scans[attack]]
            rate = sum(h is not None for h in hits) if attack == "none" else sum(h == 0 for h in hits)
            row.append(f"{rate}/{len(hits)}")
        rows.append(row)
    header = ["rule"] + [("false positives (clean)" if a == "none" else f"{a} found") for a in args.attacks]
    table = markdown_table(header, rows)
    print(table)
    write_result("tac_tuning_digits", {"seeds": args.seeds, "clean_fraction": args.clean_fraction, "scans": scans}, table)


if __name__ == "__main__":
    main()
