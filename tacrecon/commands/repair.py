"""``repair``: scan a model a practitioner was handed, remove the backdoor, save the repaired model.

The record (``repair.json``) has the same schema as a ``defend tac`` run's (``Defense.record``),
with the model's figures before and after.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tacrecon.artifact import evaluate as evaluate_attack
from tacrecon.commands.scan import prepare, write_html, write_outputs
from tacrecon.data import Dataset
from tacrecon.defenses.tac import TAC
from tacrecon.errors import TacreconError
from tacrecon.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_folder,
    provenance,
    save_checkpoint,
    tensors_to_save,
)
from tacrecon.loading import LoadedModel
from tacrecon.metrics import accuracy, der

log = logging.getLogger(__name__)


def model_metrics(loaded: LoadedModel, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    """ACC on the test split, and ASR / RA when the model came with its attack."""
    if loaded.artifact is None:
        return {"acc": accuracy(model, data.test)}
    metrics = evaluate_attack(model, loaded.artifact.attack, data)
    return {k: v for k, v in metrics.items() if v is not None}


def run_repair(model: str, dataset: str, out: str | Path, *, config: dict[str, Any] | None = None,
               json: str | Path | None = None, plot: str | Path | None = None, html: str | Path | None = None,
               command: str | None = None, **options: Any) -> dict[str, Any]:
    """Scan MODEL with TAC (hyperparameters ``config``, flat names), repair every flagged class
    (or ``force_target``), and write the repaired model and ``repair.json`` to ``out``.

    ``options`` are :func:`~tacrecon.commands.scan.prepare`'s (``root``, ``device``, ``seed``,
    ``weights``, ``head``, ``normalize``, ``clean_fraction``, ``clean_n``); ``html``: the
    one-page report (``command`` shown on it). Returns the record.
    """
    start = time.perf_counter()
    out = Path(out)
    check_repair_folder(out, model)
    loaded, data, clean = prepare(model, dataset, json=json, plot=plot, html=html, **options)
    before = model_metrics(loaded, loaded.model, data)
    tac = TAC.from_dict({**(config or {}), "repair": True})
    tac.fit(loaded.model, clean, torch.Generator().manual_seed(options.get("seed", 0)))
    after = model_metrics(loaded, tac.model_, data)
    record = {**tac.record(), "model": model, "dataset": dataset, "classes": data.classes, "clean_samples": len(clean),
              "before": before, "after": after}
    if "asr" in before:
        record["der"] = der(before["acc"], after["acc"], before["asr"], after["asr"])
    save_repaired(loaded, tac.model_, out, data)
    write_outputs(record, json, plot)
    if tac.stand_ins_ is not None:  # what the fine-tune taught the model to ignore
        from tacrecon.plots import plot_stand_ins

        plot_stand_ins(tac.stand_ins_, tac.stats_["stand_in_targets"], out / "stand_in.png", data.classes)
        record["stand_in"] = "stand_in.png"
    patches = None
    if tac.patches_ is not None:
        from tacrecon.plots import plot_patches

        patches = (*tac.patches_, tac.stats_["patch_targets"])
        plot_patches(*patches, out / "patch.png", data.classes)
        record["patch"] = "patch.png"
    record.update(total_seconds=time.perf_counter() - start, provenance=provenance(options.get("device", "cpu")))
    if html:
        write_html(html, record, clean, tac.stand_ins_, tac.stats_.get("stand_in_targets", []), command, patches)
    atomic_write_json(out / "repair.json", record)
    return record


def check_repair_folder(out: Path, model: str) -> None:
    """Refuse an ``--out`` that would overwrite the model being repaired or another model."""
    check_output_folder(out)
    if Path(model).is_dir() and out.resolve() == Path(model).resolve():
        raise TacreconError(f"--out {out} is the model's own folder: the repaired model goes elsewhere")
    if (out / "attack.json").is_file() or ((out / "model.json").is_file() and not (out / "repair.json").is_file()):
        raise TacreconError(f"--out {out} holds another model (not an earlier repair): give a new folder")


def save_repaired(loaded: LoadedModel, model: torch.nn.Module, out: Path, data: Dataset,
                  filename: str = "repaired.safetensors") -> None:
    """A registered architecture is saved as a checkpoint; a user module as its own state_dict
    (the user's keys) in ``filename``."""
    if loaded.model_kwargs is not None:
        save_checkpoint(model, out, {"arch": loaded.arch, "model_kwargs": loaded.model_kwargs, "dataset": data.name,
                                     "classes": data.classes, "input_shape": list(data.input_shape)})
        return
    from safetensors.torch import save

    inner = getattr(model, "module", model)  # the user's module inside the adapter
    atomic_write_bytes(out / filename, save(tensors_to_save(inner)))
