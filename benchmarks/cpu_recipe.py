"""The CPU protocol recipe: clean resnet_small on cifar10, test accuracy and training minutes.

Usage: python benchmarks/cpu_recipe.py --data-root DIR [--seeds 0 1] [--dataset cifar10]

The bar (foundation issue): >= 85% clean test accuracy in <= 15 minutes of training on the
project's 2-core CPU. The recipe is ``tacrecon.recipes.default_train_config`` with
``resnet_small`` at width 16; nothing here overrides it.
"""

from __future__ import annotations

import argparse

from common import markdown_table, write_result
from tacrecon.workflows import train_clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    runs, rows = [], []
    for seed in args.seeds:
        r = train_clean(args.dataset, "resnet_small", None, root=args.data_root, seed=seed)
        runs.append({k: r[k] for k in ("seed", "acc", "seconds")})
        rows.append([args.dataset, seed, f"{r['acc']:.2%}", f"{r['seconds'] / 60:.1f}"])
        print(rows[-1], flush=True)
    record = {"dataset": args.dataset, "arch": "resnet_small", "train_config": r["train_config"], "runs": runs}
    table = markdown_table(["dataset", "seed", "clean test ACC", "training minutes"], rows)
    print(write_result(f"cpu_recipe_{args.dataset}", record, table))


if __name__ == "__main__":
    main()
