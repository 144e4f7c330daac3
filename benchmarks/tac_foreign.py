"""TAC's default scan and repair on the foreign model family (tuning models: seeds 100 and up).

Usage: python benchmarks/tac_foreign.py --data-root DIR [--models NAME ...] [--config KEY=VALUE ...]
                                        [--part holdout] [--name tac_foreign]

Each model of benchmarks/foreign/models (trained by code that shares nothing with tacrecon) is
loaded as a user's module (``benchmarks/foreign/nets.py:Factory`` with its weights), the
defender's clean set is 5% of the training split drawn with the model's seed outside its poisoned
images, and TAC runs with its defaults (or ``--config``). ACC is measured on the test split, ASR
with the model's own test trigger on the test images outside its target. One JSON per model is
kept under docs/benchmarks/tac_foreign/ (a rerun skips it), the table in tac_foreign.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tacrecon.cli import parse_sets
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.io import atomic_write_json, read_json
from tacrecon.loading import load_any
from tacrecon.metrics import predict

from common import DOCS, markdown_table, pct, write_result

FAMILY = Path(__file__).resolve().parent / "foreign"
sys.path.insert(0, str(FAMILY))  # the family's trigger code, to measure ASR: it shares no code with tacrecon
import plan  # noqa: E402
import triggers  # noqa: E402


def rates(model: torch.nn.Module, test, meta: dict) -> tuple[float, float | None]:
    """ACC on ``test``, and ASR of the model's test trigger on its images outside the target."""
    acc = float((predict(model, test.x) == test.y).float().mean())
    if meta["clean"]:
        return acc, None
    keep = test.y != meta["target"]
    x = triggers.apply_in_chunks(triggers.TEST[meta["trigger"]], test.x[keep].cpu(), meta["trigger_seed"])
    return acc, float((predict(model, x) == meta["target"]).float().mean())


def run(folder: Path, root: str | None, config: dict) -> dict:
    meta = read_json(folder / "model.json")
    data = load_dataset(meta["dataset"], root=root)
    loaded = load_any(f"{FAMILY / 'nets.py'}:{meta['factory']}", weights=folder / "weights.safetensors",
                      num_classes=data.num_classes, dataset=meta["dataset"])
    poisoned = (None if meta["clean"] else
                triggers.poison_indices(data.train.y.cpu(), meta["target"], meta["rate"], meta["seed"]))
    clean = clean_subset(data.train, 0.05, None, meta["seed"], poisoned)
    before = rates(loaded.model, data.test, meta)
    tac = TAC.from_dict(config).fit(loaded.model, clean, torch.Generator().manual_seed(meta["seed"]))
    after = rates(tac.model_, data.test, meta)
    return {"model": folder.name, "meta": {k: meta[k] for k in ("arch", "trigger", "target", "rate", "clean")},
            "before": {"acc": before[0], "asr": before[1]}, "after": {"acc": after[0], "asr": after[1]},
            "targets": tac.targets_, "relative": tac.scores()["relative"], "anomaly_index": tac.scores()["anomaly_index"],
            "stats": {k: v for k, v in tac.stats_.items() if isinstance(v, (int, float))}, "config": config}


def row(r: dict) -> list:
    m, b, a = r["meta"], r["before"], r["after"]
    found = "clean" if m["clean"] else f"{m['trigger']} -> {m['target']} at {m['rate']:.0%}"
    met = (a["asr"] is not None and a["asr"] <= 0.05 and b["acc"] - a["acc"] <= 0.02)
    target = m["target"]
    return [r["model"], found, str(r["targets"] or "-"), f"{pct(b['acc'])} -> {pct(a['acc'])}",
            f"{pct(b['asr'])} -> {pct(a['asr'])}", "-" if m["clean"] else ("yes" if met else "no"),
            f"{r['relative'][target]:.2f}" if not m["clean"] else f"{min(r['relative']):.2f}",
            f"{r['stats'].get('seconds', 0):.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="TAC hyperparameters")
    parser.add_argument("--part", choices=sorted(plan.PARTS), default="tuning",
                        help="holdout, holdout2: one of the family's held-out parts, each read once per revision")
    parser.add_argument("--name", default="tac_foreign", help="result name (a folder of per-model JSON and a table)")
    args = parser.parse_args()
    config = parse_sets(args.config)
    cache = DOCS / args.name
    results = []
    for folder in sorted(p for p in plan.PARTS[args.part][2].iterdir() if (p / "model.json").is_file()):
        if args.models and folder.name not in args.models:
            continue
        path = cache / f"{folder.name}.json"
        if not path.is_file() or read_json(path).get("config") != config:
            atomic_write_json(path, run(folder, args.data_root, config))
        results.append(read_json(path))
    table = markdown_table(["model", "backdoor", "flagged", "ACC", "ASR", "removal bar", "relative norm (target or min)",
                            "TAC s"], [row(r) for r in results])
    write_result(args.name, {"config": config, "models": [r["model"] for r in results]}, table + "\n")


if __name__ == "__main__":
    main()
