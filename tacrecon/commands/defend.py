"""Run any registered defense on any model: ``tacrecon defend NAME MODEL --out DIR``.

MODEL is anything ``scan`` takes (an attack artifact, a checkpoint, ``file.py:Name --weights W``,
a BackdoorBench record). The output folder holds the defended model in the model's own format (a
checkpoint of a registered architecture; for a user's module its state_dict, with the user's keys,
as ``defended.safetensors``) and ``defense.json``, written last: ACC / ASR / RA before and after
(ASR and RA per backdoor too), DER, the detected classes (if the defense detects), seconds per
phase, the defense's config and provenance. A folder with a complete ``defense.json`` of the same
configuration is reused; one of another configuration is an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tacrecon.artifact import Artifact, evaluate, is_complete, load_artifact
from tacrecon.data import Dataset, clean_subset, load_dataset
from tacrecon.defenses import Defense, create_defense
from tacrecon.errors import TacreconError
from tacrecon.io import atomic_write_json, provenance, read_json, save_checkpoint
from tacrecon.metrics import der

log = logging.getLogger(__name__)

DEFENSE_JSON = "defense.json"
BEFORE_KEYS = ("acc", "asr", "ra", "asr_per_backdoor", "ra_per_backdoor")  # the artifact's own measures


def request_of(name: str, budget: str | None, overrides: dict[str, Any], clean_fraction: float | None,
               clean_n: int | None, seed: int) -> dict[str, Any]:
    """What identifies a defense run on one artifact (compared when a folder is reused)."""
    return {"defense": name, "budget": budget, "overrides": overrides, "clean_fraction": clean_fraction,
            "clean_n": clean_n, "seed": seed}


def reuse(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The record in ``out`` if it is complete and was made by the same ``request``."""
    path = out / DEFENSE_JSON
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("request") != request:
        raise TacreconError(f"{out} holds a defense run of another configuration ({record.get('request')}); "
                            f"choose another --out")
    log.info("reusing the complete defense run in %s", out)
    return record


def defend_artifact(defense: Defense, art: Artifact, data: Dataset, *, seed: int = 0,
                    clean_fraction: float | None = None, clean_n: int | None = None) -> dict[str, Any]:
    """Fit ``defense`` on the clean set of ``data`` (drawn with ``seed``, avoiding the artifact's
    poisoned indices) and measure the model of ``art`` before and after; returns the record.

    "Before" is the artifact's own record (measured on the same test split when it was made).
    ASR and RA are the worst over the attack's backdoors, with ``asr_per_backdoor`` and
    ``ra_per_backdoor`` beside them (before: where the artifact recorded them; artifacts made
    before per-backdoor rates existed have one backdoor, whose rates are ``asr`` and ``ra``);
    ``attack_targets`` lists the target of every all-to-one backdoor, ``attack_target`` is the first.
    """
    clean = clean_subset(data.train, clean_fraction, clean_n, seed, art.poison_index)
    before = {k: art.record[k] for k in BEFORE_KEYS if k in art.record}
    defense.fit(art.model, clean, torch.Generator().manual_seed(seed))
    after = evaluate(defense.model_, art.attack, data)
    asr_before, asr_after = before["asr"], after["asr"]
    removal = (None if asr_before is None or asr_after is None or after["acc"] is None
               else der(before["acc"], after["acc"], asr_before, asr_after))
    return {**defense.record(), "attack": art.record["attack"], "dataset": art.record["dataset"],
            "arch": art.record["arch"], "attack_seed": art.record["seed"], "attack_target": art.attack.target,
            "attack_targets": [b.target for b in art.attack.backdoors() if b.target is not None],
            "clean_samples": len(clean), "before": before, "after": after, "der": removal}


def run_defense(name: str, model: str | Path, out: str | Path, *, dataset: str | None = None,
                root: str | Path | None = None, device: torch.device | str = "cpu", seed: int = 0,
                config: dict[str, Any] | None = None, budget: str | None = None, clean_fraction: float | None = None,
                clean_n: int | None = None, weights: str | Path | None = None, head: str | None = None,
                normalize: str | None = None, save_model: bool = True) -> dict[str, Any]:
    """Defend ``model`` with defense ``name`` (hyperparameters ``config`` on top of the named
    ``budget``) and write the result to ``out``.

    The defender's clean set is ``clean_n`` samples (or ``clean_fraction``, default 5%, of the
    training split of ``dataset``; an artifact's own by default) drawn with ``seed``, outside an
    artifact's poisoned images. ASR, RA and DER are measured where the model is an attack
    artifact (its trigger is known); ACC always. Returns the defense.json record.
    """
    out, overrides = Path(out), dict(config or {})
    holds_model = (out / "attack.json").is_file() or ((out / "model.json").is_file() and not (out / DEFENSE_JSON).is_file())
    if out.resolve() == Path(model).resolve() or holds_model:
        raise TacreconError(f"--out {out} holds a model (an attack artifact or a checkpoint): the defended model goes "
                            "to another folder")
    request = request_of(name, budget, overrides, clean_fraction, clean_n, seed)
    if not is_complete(model):
        request.update(model=str(model), weights=None if weights is None else str(weights), dataset=dataset)
    done = reuse(out, request)
    if done is not None:
        return done
    defense = create_defense(name, budget, **overrides)  # bad names/keys fail before any loading
    start = time.perf_counter()
    if is_complete(model):
        record = defend_artifact_folder(defense, Path(model), out, root=root, device=device, seed=seed,
                                        clean_fraction=clean_fraction, clean_n=clean_n, save_model=save_model)
    else:
        record = defend_model(defense, str(model), out, dataset=dataset, root=root, device=device, seed=seed,
                              clean_fraction=clean_fraction, clean_n=clean_n, weights=weights, head=head,
                              normalize=normalize, save_model=save_model)
    record = {"request": request, **record, "total_seconds": time.perf_counter() - start,
              "provenance": provenance(device)}
    atomic_write_json(out / DEFENSE_JSON, record)
    return record


def defend_artifact_folder(defense: Defense, artifact: Path, out: Path, *, root: str | Path | None,
                           device: torch.device | str, seed: int, clean_fraction: float | None, clean_n: int | None,
                           save_model: bool) -> dict[str, Any]:
    """:func:`defend_artifact` on the artifact in folder ``artifact``; the defended model saved
    as a checkpoint of its architecture."""
    art = load_artifact(artifact, device)
    data = load_dataset(art.record["dataset"], root=root, device=device)
    record = {**defend_artifact(defense, art, data, seed=seed, clean_fraction=clean_fraction, clean_n=clean_n),
              "artifact": str(artifact)}
    if save_model:
        meta = read_json(artifact / "model.json")
        save_checkpoint(defense.model_, out, {k: v for k, v in meta.items() if k not in ("format", "version")})
    return record


def defend_model(defense: Defense, model: str, out: Path, *, dataset: str | None, save_model: bool,
                 **options: Any) -> dict[str, Any]:
    """Defend a model that is not an attack artifact (``options``: those of
    :func:`~tacrecon.commands.scan.prepare`); ACC before and after, the model saved in its own format."""
    from tacrecon.commands.repair import model_metrics, save_repaired
    from tacrecon.commands.scan import prepare

    if dataset is None:
        raise TacreconError(f"{model} is not a complete attack artifact: for any other model, say which data set it "
                            "classifies with --dataset")
    seed = options["seed"]
    loaded, data, clean = prepare(model, dataset, **options)
    before = model_metrics(loaded, loaded.model, data)
    defense.fit(loaded.model, clean, torch.Generator().manual_seed(seed))
    after = model_metrics(loaded, defense.model_, data)
    if save_model:
        save_repaired(loaded, defense.model_, out, data, "defended.safetensors")
    return {**defense.record(), "model": model, "dataset": dataset, "clean_samples": len(clean), "before": before,
            "after": after}
