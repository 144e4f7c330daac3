"""How far the poisoned class stands out on the foreign family, under each look of the scan.

Usage: python benchmarks/tac_foreign_looks.py --data-root DIR

For every CIFAR-10 model of benchmarks/foreign/models (tuning models, trained without tacrecon
code), the clean set of the protocol (5% of the training split, the model's seed, outside its
poisoned images) is scanned with the QP over every sample, with quantiles 0.99 to 0.8 of the
margins, and with the universality ratio. The table gives, per look, the target's norm over the
median norm and its rank (0: the cheapest class), and for a clean model its cheapest class: a
bound on the relative norm can only separate the two where every target lies below every clean
model's cheapest class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tacrecon.data import clean_subset, load_dataset
from tacrecon.io import read_json
from tacrecon.loading import load_any
from tacrecon.models import latents_of
from tacrecon.stats import relative_scores
from tacrecon.tac.detect import reconstruct, universality_ratios

from common import markdown_table, write_result

FAMILY = Path(__file__).resolve().parent / "foreign"
sys.path.insert(0, str(FAMILY))  # the family's poisoning, to leave its poisoned images out of the clean set
import triggers  # noqa: E402

LOOKS = {"every sample": None, "q 0.99": 0.99, "q 0.95": 0.95, "q 0.9": 0.9, "q 0.8": 0.8}


def looks(folder: Path, data) -> dict:
    meta = read_json(folder / "model.json")
    loaded = load_any(f"{FAMILY / 'nets.py'}:{meta['factory']}", weights=folder / "weights.safetensors",
                      num_classes=data.num_classes, dataset=meta["dataset"])
    poisoned = (None if meta["clean"] else
                triggers.poison_indices(data.train.y.cpu(), meta["target"], meta["rate"], meta["seed"]))
    clean = clean_subset(data.train, 0.05, None, meta["seed"], poisoned)
    z = latents_of(loaded.model, clean.x)
    out = {}
    for name, q in LOOKS.items():
        qp = reconstruct(loaded.model, z, True, q)
        out[name] = relative_scores(qp.norms).tolist()
        if q is None:
            out["ratio"] = relative_scores(universality_ratios(loaded.model, z, clean.y, qp)).tolist()
    return {"model": folder.name, "target": None if meta["clean"] else meta["target"], "looks": out}


def cell(relative: list[float], target: int | None) -> str:
    order = sorted(range(len(relative)), key=relative.__getitem__)
    if target is None:
        return f"cheapest {relative[order[0]]:.3f}"
    return f"{relative[target]:.3f} (rank {order.index(target)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    data = load_dataset("cifar10", root=args.data_root)
    folders = sorted(p for p in (FAMILY / "models").iterdir()
                     if (p / "model.json").is_file() and read_json(p / "model.json")["dataset"] == "cifar10")
    results = [looks(f, data) for f in folders]
    names = [*LOOKS, "ratio"]
    table = markdown_table(["model", *names], [[r["model"], *(cell(r["looks"][n], r["target"]) for n in names)]
                                               for r in results])
    write_result("tac_foreign_looks", {"models": results}, table + "\n")


if __name__ == "__main__":
    main()
