"""Cost of a TAC scan relative to one forward pass over the clean set (data decoding aside).

Usage: python benchmarks/scan_speed.py ARTIFACT [ARTIFACT ...] --data-root DIR [--clean-n 2500] [--repeats 3]

The bar (TAC issue): scan < 3x one forward pass over the 2,500 clean CIFAR-10 images.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch

from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.loading import load_any
from tacrecon.metrics import predict

from common import markdown_table, write_result


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--clean-n", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset(args.dataset, root=args.data_root)
    rows, cells = [], []
    for path in args.artifacts:
        loaded = load_any(str(path))
        clean = clean_subset(data.train, None, args.clean_n, 0, loaded.artifact.poison_index)
        model, tac = loaded.model, TAC.from_dict({"repair": False})
        forward = best_of(partial(predict, model, clean.x), args.repeats)
        scan = best_of(partial(tac.fit, model, clean), args.repeats)
        qp = tac.stats_["scan_seconds"]
        cells.append({"artifact": str(path), "forward_s": forward, "scan_s": scan, "ratio": scan / forward})
        rows.append([path.parent.name, f"{forward:.2f}", f"{scan:.2f}", f"{scan / forward:.2f}x"])
        print(rows[-1], qp, flush=True)
    table = markdown_table(["model", "forward pass (s)", "TAC scan (s)", "scan / forward"], rows)
    print(write_result(f"scan_speed_{args.dataset}", {"clean_n": args.clean_n, "threads": torch.get_num_threads(),
                                                       "cells": cells}, table))


if __name__ == "__main__":
    main()
