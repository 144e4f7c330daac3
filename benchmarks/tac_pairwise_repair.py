"""TAC's repair with the pairwise look on (`pairwise=true`) against the default, on tuning models.

Usage: OMP_NUM_THREADS=1 python benchmarks/tac_pairwise_repair.py --data-root DIR

The pairwise look (thresholds fixed on the tuning models, docs/benchmarks/tac_pairwise.md) flags
(source, target) pairs; with ``pairwise`` on, TAC repairs the targets of those pairs as well as
the classes its scan flags, each with the class's own s_t, the stand-ins and the TAC loss of the
default repair. Models, all tuning ones (seeds 100+): the digits models of
benchmarks/tac_pairwise.py (all-to-all BadNets and Blended, TaCT, clean; seeds 100-102; a fifth of
the training split as the clean set, the project's digits setting) and the CIFAR-10 TAC-aware
model at weight 0.3 (seed 100; 5% clean set), which hides its target from the scan. Per model
and setting: the classes repaired, ACC and ASR on the test split before and after, and seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from tacrecon.artifact import evaluate, load_artifact
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC

from common import TUNING, markdown_table, pct, write_result

SETTINGS = {"default": {}, "pairwise": {"pairwise": True}}


def models() -> Iterator[tuple[str, Path, float]]:
    """(name, artifact folder, clean fraction) of every model."""
    for sub in ("badnets-all2all", "blended-all2all", "tact", "none"):
        for seed in (100, 101, 102):
            yield f"digits-{sub}-seed{seed}", TUNING / "digits-pairwise" / sub / f"seed{seed}", 0.2
    yield "cifar10-tac_aware-w0.3-seed100", TUNING / "cifar10-tac-aware" / "badnets-w0.3-b0.1-seed100", 0.05


def run(name: str, folder: Path, fraction: float, data_root: str | None, cache: dict) -> list[dict[str, Any]]:
    """Both settings on one model."""
    art = load_artifact(folder)
    dataset = art.record["dataset"]
    if dataset not in cache:
        cache[dataset] = load_dataset(dataset, root=data_root)
    data = cache[dataset]
    clean = clean_subset(data.train, fraction, None, art.record["seed"], art.poison_index)
    before = evaluate(art.model, art.attack, data)
    out = []
    for setting, config in SETTINGS.items():
        start = time.perf_counter()
        tac = TAC.from_dict(config).fit(art.model, clean, torch.Generator().manual_seed(art.record["seed"]))
        after = evaluate(tac.model_, art.attack, data)
        out.append({"model": name, "setting": setting, "scan_flagged": tac.scan_.flagged, "targets": tac.targets_,
                    "repaired": tac.repaired_, "before": before, "after": after,
                    "pairs": [list(p) for p in tac.scan_.pairwise.flagged] if tac.scan_.pairwise else None,
                    "seconds": time.perf_counter() - start})
        print(f"{name} {setting}: targets {tac.targets_}, ACC {pct(before['acc'])} -> {pct(after['acc'])}, "
              f"ASR {pct(before['asr'])} -> {pct(after['asr'])}", flush=True)
    return out


def row(r: dict[str, Any]) -> list[Any]:
    b, a = r["before"], r["after"]
    pairs = " ".join(f"{s}->{t}" for s, t in (r["pairs"] or [])[:4]) + (" ..." if len(r["pairs"] or []) > 4 else "")
    return [r["model"], r["setting"], str(r["scan_flagged"] or "-"), pairs or "-", str(r["targets"] or "-"),
            f"{pct(b['acc'])} -> {pct(a['acc'])}", f"{pct(b['asr'])} -> {pct(a['asr'])}", f"{r['seconds']:.0f}"]


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    cache: dict = {}
    results = [r for name, folder, fraction in models() for r in run(name, folder, fraction, args.data_root, cache)]
    text = ("Settings: TAC's default (revision 8) and the same with `pairwise=true`. ASR: the test split's images "
            "whose label the backdoor changes (TaCT: its source class); `-` for a clean model.\n\n"
            + markdown_table(["model", "setting", "scan flagged", "pairs flagged", "classes repaired", "ACC (%)",
                              "ASR (%)", "s"], [row(r) for r in results]))
    print(write_result("tac_pairwise_repair", {"results": results}, text))


if __name__ == "__main__":
    main()
