"""End-to-end steps shared by the CLI and the benchmarks: train a clean model, the demo."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tacrecon.data import load_dataset
from tacrecon.io import atomic_write_json, provenance, save_checkpoint
from tacrecon.metrics import accuracy
from tacrecon.recipes import build_model, default_train_config, model_kwargs
from tacrecon.train import fit

log = logging.getLogger(__name__)


def train_clean(dataset: str, arch: str, out: str | Path | None, *, root: str | Path | None = None,
                device: torch.device | str = "cpu", seed: int = 0, train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``arch`` on the clean ``dataset`` with the recipe (``train``: :class:`~tacrecon.train.TrainConfig`
    changes to it), save it to ``out`` (if given).

    Returns the result record: ACC on the test split, seconds, the resolved config, provenance.
    """
    data = load_dataset(dataset, root=root, device=device)
    cfg = default_train_config(dataset, **(train or {}))
    kwargs = model_kwargs(arch, data)
    model = build_model(arch, kwargs, seed).to(device)
    start = time.perf_counter()
    fit(model, data.train, cfg, generator=torch.Generator().manual_seed(seed), desc=f"train {arch}")
    seconds = time.perf_counter() - start
    record = {"dataset": dataset, "arch": arch, "seed": seed, "acc": accuracy(model, data.test),
              "seconds": seconds, "train_config": cfg.to_dict(), "provenance": provenance(device)}
    if out is not None:
        meta = {"arch": arch, "model_kwargs": kwargs, "dataset": dataset, "classes": data.classes,
                "input_shape": list(data.input_shape), "provenance": record["provenance"]}
        save_checkpoint(model, out, meta)
        atomic_write_json(Path(out) / "train.json", record)
    return record


def demo(device: torch.device | str = "cpu", seed: int = 0, epochs: int | None = None,
         out: str | Path | None = None) -> int:
    """Attack digits with BadNets, scan the model with TAC, repair it; print ACC/ASR before and after."""
    import tempfile

    from tacrecon.artifact import run_attack
    from tacrecon.defenses.tac import TAC
    from tacrecon.repair import run_repair

    train = {} if epochs is None else {"epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        attack = run_attack("badnets", "digits", "resnet_small", root / "badnets", device=device, seed=seed,
                            train=train)
        print(f"1. trained a BadNets-backdoored resnet_small on digits (target class 0): "
              f"ACC {attack['acc']:.2%}, ASR {attack['asr']:.2%} ({attack['seconds']:.0f} s)")
        # on 8 x 8 digits, pruning the TAC's units does not remove BadNets; the TAC loss does
        # (docs/benchmarks/tac_repair_tuning_digits.md): the demo uses TAC's digits budget
        r = run_repair(str(root / "badnets"), "digits", root / "repaired", device=device, seed=seed,
                       clean_fraction=0.2, config=TAC.budgets["digits"])
    scan = r["scores"]
    found = f"class {scan['target']} flagged" if scan["backdoored"] else "no class flagged"
    print(f"2. TAC scan on {r['clean_samples']} clean images: {found} (anomaly index "
          f"{max(scan['anomaly_index']):.2f}, p = {scan['p_value']:.3g}, {scan['scan_seconds']:.1f} s)")
    b, a = r["before"], r["after"]
    print(f"3. repair: ACC {b['acc']:.2%} -> {a['acc']:.2%}, ASR {b['asr']:.2%} -> {a['asr']:.2%} "
          f"(DER {r['der']:.3f}, {r['stats'].get('repair_seconds', 0):.0f} s)")
    return 0
