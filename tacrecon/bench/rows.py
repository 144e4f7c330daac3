"""The finished cells of a bench output folder, read as flat :class:`Row` records for the report.

A cell's record holds the model's ASR and RA as the worst over its backdoors; records made since
per-backdoor rates exist also hold ``asr_per_backdoor`` (before and after the defense) and
``attack_targets`` (every all-to-one target; empty for all-to-all). Older records read as one
backdoor whose target is ``attack_target``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tacrecon.bench.cells import FAILED_SUFFIX, naming_params
from tacrecon.errors import TacreconError
from tacrecon.io import read_json

# an attacked model whose ASR before any defense is at most this, the removal bar's ASR, holds no backdoor
# to find or remove: the report leaves it out of detection, the removal bar and the comparison
IMPLANT_ASR = 0.05


@dataclass
class Row:
    """One finished cell, flattened."""

    dataset: str
    arch: str
    attack: str  # the attack's folder: its name, with -<hash> when its parameters are overridden
    seed: int
    defense: str
    acc: float
    asr: float | None
    ra: float | None
    der: float | None
    acc_before: float
    asr_before: float | None
    target: int | None
    targets: list
    attack_target: int
    seconds: float
    norms: list | None
    relative: list | None = None  # norms over their median, and the same for TAC's robust look (revision 4+)
    robust_relative: list | None = None
    robust_bound: float | None = None
    clean: bool = False  # the attack is ``none``: a flagged class is a false positive
    defense_params: dict | None = None  # the overrides that a -<hash> in ``defense`` stands for
    revision: int = 1  # the defense's code revision that made the cell (``Defense.revision``)
    cell_seconds: float | None = None  # the whole cell (loading included); ``seconds`` is the defense's
    attack_seconds: float | None = None  # the training of the cell's attack artifact
    attack_revision: int = 1  # the attack's code revision that made the artifact (``Attack.revision``)
    asr_per_backdoor: dict | None = None  # after the defense, {backdoor: ASR}; ``asr`` is the largest
    asr_before_per_backdoor: dict | None = None
    attack_targets: list = field(default_factory=list)  # every all-to-one target (empty: all-to-all)
    attack_params: dict | None = None  # the overrides that a -<hash> in ``attack`` stands for

    def implanted(self) -> bool:
        """The attacked model carries a backdoor: its ASR before any defense is above
        :data:`IMPLANT_ASR` (unknown counts as implanted)."""
        return self.asr_before is None or self.asr_before > IMPLANT_ASR

    def detected(self) -> bool:
        """Every target of the attack flagged (any class, for an all-to-all attack)."""
        return all(t in self.targets for t in self.attack_targets) if self.attack_targets else bool(self.targets)


def load_rows(out: str | Path) -> tuple[list[Row], int]:
    """Every finished cell under ``out/cells`` and the number of failed ones.

    A cell whose latest run failed counts as failed even where an older result of it (made under
    another config or code revision) is still in place.
    """
    root = Path(out) / "cells"
    if not root.is_dir():
        raise TacreconError(f"{out}: no cells/ folder (not a bench output folder)")
    rows, failed = [], 0
    for path in sorted(root.rglob("*.json")):
        if path.name.endswith(FAILED_SUFFIX):
            failed += 1
        elif not path.with_name(path.stem + FAILED_SUFFIX).exists():
            rows.append(read_row(root, path))
    return rows, failed


def read_row(root: Path, path: Path) -> Row:
    """The :class:`Row` of the cell result at ``path`` (``root``/dataset/arch/attack/seedN/defense.json)."""
    parts = path.relative_to(root).parts
    if len(parts) != 5 or not parts[3].startswith("seed") or not parts[3][4:].isdigit():
        raise TacreconError(f"{path}: not a cell result (cells/<dataset>/<arch>/<attack>/seed<N>/<defense>.json)")
    dataset, arch, attack, seed = parts[:4]
    r = read_json(path)
    try:
        scores, made = r.get("scores") or {}, r.get("attack_record") or {}
        config = r.get("defense_config") or {}
        return Row(dataset, arch, attack, int(seed[4:]), path.stem, r["after"]["acc"], r["after"]["asr"],
                   r["after"]["ra"], r["der"], r["before"]["acc"], r["before"]["asr"], r["target"], r["targets"],
                   r["attack_target"], r["seconds"], scores.get("norms"), scores.get("relative"),
                   # TAC's records of revisions <= 6 call the robust look the second one
                   scores.get("robust_relative", scores.get("second_relative")),
                   config.get("robust_max_relative", config.get("second_max_relative")),
                   r["attack"] == "none", (r.get("request") or {}).get("defense_params"), r.get("defense_revision", 1),
                   r.get("cell_seconds"), made.get("seconds"), made.get("attack_revision", 1),
                   r["after"].get("asr_per_backdoor"), r["before"].get("asr_per_backdoor"),
                   r.get("attack_targets", [r["attack_target"]]), attack_overrides(r.get("request") or {}))
    except (KeyError, TypeError, AttributeError) as e:
        raise TacreconError(f"{path}: not a cell result (missing or malformed {e})") from None


def attack_overrides(request: dict) -> dict | None:
    """What a cell's ``<attack>-<hash>`` folder stands for: the attack's parameters (but its target,
    which names no folder) and the victim recipe's changes (``train``) that the grid set; None
    when it set none."""
    train = request.get("train") or {}
    return {**naming_params(request.get("attack_params") or {}), **({"train": train} if train else {})} or None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: Sequence[float | None]) -> str:
    """Percent, with +- std over seeds when there are several."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    m, s = mean_std([100 * v for v in vals])
    return f"{m:.1f}" if len(vals) == 1 else f"{m:.1f}±{s:.1f}"


def order(names: set[str], first: Sequence[str]) -> list[str]:
    return [n for n in first if n in names] + sorted(n for n in names if n not in first)
