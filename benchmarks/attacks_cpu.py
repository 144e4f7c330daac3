"""The attack bar on the CPU protocol: every attack's ACC / ASR / RA and training minutes.

Usage: python benchmarks/attacks_cpu.py --data-root DIR [--runs runs/cpu] [--attacks ...] [--seed 0] [--arch resnet_small]

Each attack artifact goes to ``<runs>/<dataset>/<arch>/<attack>/seed<seed>`` and is reused
when complete, so a killed run resumes where it stopped. The bar (attacks issue): ASR >= 90%
(SIG >= 80%) with clean accuracy within 2 points of the clean model (``none``) of the same recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tacrecon.artifact import run_attack

from common import markdown_table, pct, write_result

ORDER = ["none", "badnets", "blended", "wanet", "sig", "trojan", "input_aware", "lira"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--attacks", nargs="+", default=ORDER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="resnet_small")
    parser.add_argument("--set", nargs="*", default=[], metavar="ATTACK.KEY=VALUE",
                        help="a deviation from the protocol, e.g. sig.rate=0.05 (named in folders and results)")
    args = parser.parse_args()
    params: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        attack, field = key.split(".", 1)
        params.setdefault(attack, {})[field] = float(value) if value.replace(".", "", 1).isdigit() else value
    records = {}
    for name in args.attacks:
        tag = "".join(f"-{k}{v}" for k, v in params.get(name, {}).items())
        out = args.runs / args.dataset / args.arch / f"{name}{tag}" / f"seed{args.seed}"
        records[name + tag] = run_attack(name, args.dataset, args.arch, out, root=args.data_root, seed=args.seed,
                                         config=params.get(name))
        print(name + tag, {k: records[name + tag][k] for k in ("acc", "asr", "ra", "seconds")}, flush=True)
    clean = records.get("none", {}).get("acc")
    rows = []
    for name, r in records.items():
        bar = 0.8 if name.startswith("sig") else 0.9
        ok = "" if name == "none" or clean is None else (
            "yes" if r["asr"] >= bar and clean - r["acc"] <= 0.02 else "no")
        rows.append([name, pct(r["acc"]), pct(r["asr"]), pct(r["ra"]), f"{r['seconds'] / 60:.1f}", ok])
    table = markdown_table(["attack", "ACC", "ASR", "RA", "wall minutes", "meets bar"], rows) + (
        "\nWall minutes are each artifact's own clock (attack.json `seconds`): most runs shared the 2 "
        "cores with other jobs (TrojanNN's also includes a 37-minute pause), so they are not "
        "timings; the quiet-machine training cost is in train_throughput_cpu.md (0.56 min per epoch).\n")
    summary = {n: {k: r[k] for k in ("acc", "asr", "ra", "seconds", "poisoned", "attack_config")} for n, r in records.items()}
    suffix = "_" + "_".join(args.set).replace("=", "") if args.set else ""
    arch = "" if args.arch == "resnet_small" else f"_{args.arch}"
    record = {"dataset": args.dataset, "arch": args.arch, "seed": args.seed, "set": args.set, "attacks": summary}
    print(write_result(f"attacks_cpu_{args.dataset}{arch}_seed{args.seed}{suffix}", record, table))


if __name__ == "__main__":
    main()
