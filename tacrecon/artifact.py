"""The attack artifact: a backdoored model, its attack (config + trigger state) and its metrics.

Layout of an artifact folder::

    model.safetensors, model.json   the backdoored classifier (see tacrecon.io)
    attack.safetensors              the trigger state and the poisoned indices
    attack.json                     attack name and config, ACC/ASR/RA, seconds, provenance

``attack.json`` is written last, atomically: a folder without it is incomplete (a killed run)
and is redone; a folder with it is reused without retraining, if it was made with the same inputs.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tacrecon.attacks import ATTACKS, Attack, create_attack
from tacrecon.config import as_stored, differences
from tacrecon.data import Dataset, load_dataset
from tacrecon.errors import TacreconError
from tacrecon.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_folder,
    provenance,
    read_json,
    save_checkpoint,
)
from tacrecon.metrics import accuracy, backdoor_rates
from tacrecon.models import load_checkpoint
from tacrecon.recipes import build_model, default_train_config, model_kwargs

log = logging.getLogger(__name__)
ATTACK_JSON, ATTACK_STATE = "attack.json", "attack.safetensors"
ARTIFACT_FILES = {ATTACK_JSON, ATTACK_STATE, "model.json", "model.safetensors"}  # what a killed run may leave


@dataclass
class Artifact:
    """A loaded attack artifact: ``model`` (eval mode), ``attack`` (ready to ``apply``),
    ``poison_index`` (K,) into the training split, and the ``record`` of attack.json."""

    model: nn.Module
    attack: Attack
    poison_index: Tensor
    record: dict[str, Any]


def is_complete(out: str | Path) -> bool:
    """True when ``out`` holds a finished artifact."""
    return (Path(out) / ATTACK_JSON).is_file()


def stored_revision(record: dict[str, Any]) -> int:
    """The attack code revision an attack.json ``record`` was made by (1 before revisions existed)."""
    return int(record.get("attack_revision", 1))


def is_current(out: str | Path) -> bool:
    """True when ``out`` holds a finished artifact made by this code's revision of its attack."""
    if not is_complete(out):
        return False
    record = read_json(Path(out) / ATTACK_JSON)
    return stored_revision(record) == ATTACKS.get(record["attack"]).revision


def evaluate(model: nn.Module, attack: Attack, data: Dataset) -> dict[str, Any]:
    """ACC on the clean test split, and ASR / RA of every backdoor of ``attack`` (None for the
    ``none`` attack): ``asr`` the worst (largest) over them, ``ra`` the worst (smallest), and
    ``asr_per_backdoor`` / ``ra_per_backdoor`` ``{name: rate}``."""
    metrics: dict[str, Any] = {"acc": accuracy(model, data.test), "asr": None, "ra": None}
    if attack.name != "none":
        metrics.update(backdoor_rates(model, data.test, attack.backdoors()))
    return metrics


def run_attack(name: str, dataset: str, arch: str, out: str | Path, *, root: str | Path | None = None,
               device: torch.device | str = "cpu", seed: int = 0, config: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None, retrain_outdated: bool = False) -> dict[str, Any]:
    """Train a backdoored ``arch`` on ``dataset`` with attack ``name`` (hyperparameters ``config``;
    ``train``: changes to the recipe's :class:`~tacrecon.train.TrainConfig`) and save the artifact.

    A complete artifact at ``out`` made with the same inputs is reused as is (one made with
    others is an error naming them); an incomplete one is deleted and redone. One made by an
    earlier revision of the attack's code (``Attack.revision``) is an error, or with
    ``retrain_outdated`` deleted and redone. Returns the attack.json record.
    """
    out = Path(out)
    attack = create_attack(name, **(config or {}))
    cfg = default_train_config(dataset, **(train or {}))
    if is_complete(out):
        record = read_json(out / ATTACK_JSON)
        asked = {"attack": attack.name, "dataset": dataset, "arch": arch, "seed": seed,
                 "attack_config": attack.to_dict(), "train_config": cfg.to_dict()}
        check_reusable(out, record, asked)
        old = stored_revision(record)
        if old == attack.revision:
            log.info("reusing the complete artifact in %s", out)
            return record
        if not retrain_outdated:
            raise TacreconError(f"{out} holds an artifact made by revision {old} of the {attack.name} attack's code, "
                                f"this is revision {attack.revision}: delete it to retrain")
        log.warning("%s was made by revision %d of %s: retraining it", out, old, attack.name)
    check_output_folder(out)
    leftovers = [p.name for p in out.iterdir()] if out.is_dir() else []
    foreign = [n for n in leftovers if n not in ARTIFACT_FILES and not n.endswith(".tmp")]
    if foreign:  # never delete what a killed run of ours did not write
        raise TacreconError(f"{out} is not empty and not an artifact (it holds {', '.join(sorted(foreign)[:4])}): "
                            "give an empty or new folder")
    data = load_dataset(dataset, root=root, device=device)
    if leftovers:
        log.warning("%s holds an incomplete or outdated artifact: redoing it", out)
        (out / ATTACK_JSON).unlink(missing_ok=True)  # first, so a kill mid-way never leaves a "complete" folder
        shutil.rmtree(out)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    attack.setup(data, generator)
    kwargs = model_kwargs(arch, data)
    model = build_model(arch, kwargs, seed).to(device)
    index = attack.train(model, data.train, cfg, generator)
    seconds = time.perf_counter() - start
    record = {"attack": attack.name, "attack_revision": attack.revision, "attack_config": as_stored(attack.to_dict()),
              "dataset": dataset, "arch": arch,
              "seed": seed, **evaluate(model, attack, data), "poisoned": int(index.numel()),
              "train_samples": len(data.train), "seconds": seconds, "train_config": cfg.to_dict(),
              "provenance": provenance(device)}
    save_artifact(out, model, attack, index, record, kwargs, data)
    return record


def check_reusable(out: Path, record: dict[str, Any], asked: dict[str, Any]) -> None:
    """Raise unless the stored ``record`` was made with the inputs ``asked`` (attack, dataset,
    arch, seed, resolved attack and train configs; the progress bar setting does not count)."""
    def as_json(d: dict[str, Any]) -> dict[str, Any]:  # the bar setting never counts
        return {k: ({kk: vv for kk, vv in v.items() if kk != "progress"} if isinstance(v, dict) else v)
                for k, v in as_stored(d).items()}

    diff = differences(as_json({k: record.get(k) for k in asked}), as_json(asked))
    if diff:
        raise TacreconError(f"{out} holds an artifact made with other inputs ({diff}): "
                            "use another folder, or delete it to retrain")


def save_artifact(out: Path, model: nn.Module, attack: Attack, index: Tensor, record: dict[str, Any],
                  kwargs: dict[str, Any], data: Dataset) -> None:
    """Write the artifact files, attack.json last."""
    from safetensors.torch import save

    meta = {"arch": record["arch"], "model_kwargs": kwargs, "dataset": data.name, "classes": data.classes,
            "input_shape": list(data.input_shape), "provenance": record["provenance"]}
    save_checkpoint(model, out, meta)
    state = {f"trigger.{k}": v.detach().cpu().contiguous() for k, v in attack.state_dict().items()}
    state["poison_index"] = index.detach().cpu().contiguous()
    atomic_write_bytes(out / ATTACK_STATE, save(state))
    atomic_write_json(out / ATTACK_JSON, record)


def load_artifact(path: str | Path, device: torch.device | str = "cpu") -> Artifact:
    """Load the artifact in folder ``path``: model, attack with its trigger state, indices."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_complete(path):
        raise TacreconError(f"{path}: not a complete attack artifact (no {ATTACK_JSON})")
    record = read_json(path / ATTACK_JSON)
    model, meta = load_checkpoint(path, device)
    attack = create_attack(record["attack"], **record["attack_config"])
    attack.bind(meta["model_kwargs"]["num_classes"], tuple(meta["input_shape"]))
    try:
        state = load_file(str(path / ATTACK_STATE))
    except Exception as e:  # noqa: BLE001 - a damaged file is the user's problem, said in one line
        raise TacreconError(f"{path / ATTACK_STATE}: cannot read ({type(e).__name__})") from None
    attack.load_state_dict({k[len("trigger."):]: v.to(device) for k, v in state.items() if k.startswith("trigger.")})
    return Artifact(model, attack, state["poison_index"].to(device), record)
