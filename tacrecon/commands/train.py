"""``train``: a clean model with the recipe, saved as a checkpoint."""

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
