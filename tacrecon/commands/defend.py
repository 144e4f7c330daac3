"""Run any registered defense on an attack artifact: ``tacrecon defend NAME ARTIFACT --out DIR``.

The output folder holds the defended model (a checkpoint of the artifact's architecture) and
``defense.json``, written last: ACC / ASR / RA before and after, DER, the detected class (if the
defense detects), seconds per phase, the defense's config and provenance. A folder with a complete
``defense.json`` of the same configuration is reused; one of another configuration is an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tacrecon.artifact import Artifact, evaluate, load_artifact
from tacrecon.data import Dataset, clean_subset, load_dataset
from tacrecon.defenses import Defense, create_defense
from tacrecon.errors import TacreconError
from tacrecon.io import atomic_write_json, provenance, read_json, save_checkpoint
from tacrecon.metrics import der

log = logging.getLogger(__name__)

DEFENSE_JSON = "defense.json"


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
    """
    clean = clean_subset(data.train, clean_fraction, clean_n, seed, art.poison_index)
    before = {k: art.record[k] for k in ("acc", "asr", "ra")}
    defense.fit(art.model, clean, torch.Generator().manual_seed(seed))
    after = evaluate(defense.model_, art.attack, data)
    asr_before, asr_after = before["asr"], after["asr"]
    removal = (None if asr_before is None or asr_after is None or after["acc"] is None
               else der(before["acc"], after["acc"], asr_before, asr_after))
    return {**defense.record(), "attack": art.record["attack"], "dataset": art.record["dataset"],
            "arch": art.record["arch"], "attack_seed": art.record["seed"], "attack_target": art.attack.target,
            "clean_samples": len(clean), "before": before, "after": after,
            "der": removal}


def run_defense(name: str, artifact: str | Path, out: str | Path, *, root: str | Path | None = None,
                device: torch.device | str = "cpu", seed: int = 0, config: dict[str, Any] | None = None,
                budget: str | None = None, clean_fraction: float | None = None, clean_n: int | None = None,
                save_model: bool = True) -> dict[str, Any]:
    """Defend the model of ``artifact`` with defense ``name`` (hyperparameters ``config`` on top of
    the named ``budget``) and write the result to ``out``.

    The defender's clean set is ``clean_n`` samples (or ``clean_fraction``, default 5%, of the
    training split) drawn with ``seed`` from the training images that were not poisoned.
    Returns the defense.json record.
    """
    out, overrides = Path(out), dict(config or {})
    if out.resolve() == Path(artifact).resolve() or (out / "attack.json").is_file():
        raise TacreconError(f"--out {out} holds an attack artifact: the defended model goes to another folder")
    request = request_of(name, budget, overrides, clean_fraction, clean_n, seed)
    done = reuse(out, request)
    if done is not None:
        return done
    defense = create_defense(name, budget, **overrides)  # bad names/keys fail before any loading
    start = time.perf_counter()
    art = load_artifact(artifact, device)
    data = load_dataset(art.record["dataset"], root=root, device=device)
    record = {"request": request, **defend_artifact(defense, art, data, seed=seed, clean_fraction=clean_fraction,
                                                    clean_n=clean_n), "artifact": str(artifact)}
    record["total_seconds"] = time.perf_counter() - start
    record["provenance"] = provenance(device)
    if save_model:
        meta = read_json(Path(artifact) / "model.json")
        save_checkpoint(defense.model_, out, {k: v for k, v in meta.items() if k not in ("format", "version")})
    atomic_write_json(out / DEFENSE_JSON, record)
    return record
