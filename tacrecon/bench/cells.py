"""Cells of a grid and where their files live.

A cell is one (dataset, arch, attack, seed, defense). Its paths are made from its inputs only::

    <artifacts>/<dataset>/<arch>/<attack>[-<h>]/seed<seed>/   the attack artifact (shared; <artifacts>
                                                              defaults to <out>/artifacts)
    <out>/cells/<dataset>/<arch>/<attack>[-<h>]/seed<seed>/<defense>[-<h>].json

``-<h>`` (8 hex digits of a hash) appears only when the attack's or the defense's hyperparameters
or the train budget are overridden, so a default cell always has the same readable path. The
attack's target class does not name its folder: it is where the backdoor points, not how the
attack works, so models whose targets are drawn per seed stay one row of the report (a grid holds
one target per data set, arch, attack and seed; the cell records it, and a changed target makes
the cell stale). A cell is
finished when its JSON exists (written atomically, last); a failed cell leaves ``<...>.failed.json``
instead and is retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tacrecon.bench.config import BenchConfig
from tacrecon.config import differences
from tacrecon.errors import TacreconError

FAILED_SUFFIX = ".failed.json"
UNNAMED_ATTACK_PARAMS = ("target",)  # attack parameters that do not enter the folder's name


def short_hash(obj: Any) -> str:
    """8 hex digits identifying a JSON-able ``obj`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def naming_params(attack_params: dict) -> dict:
    """The attack parameters that name its folder (all but the target class)."""
    return {k: v for k, v in attack_params.items() if k not in UNNAMED_ATTACK_PARAMS}


@dataclass(frozen=True)
class Cell:
    """One defense run on one attack artifact, with everything that defines both."""

    dataset: str
    arch: str
    attack: str
    seed: int
    defense: str
    budget: str | None = None
    attack_params: dict = field(default_factory=dict, hash=False, compare=False)
    train: dict = field(default_factory=dict, hash=False, compare=False)
    defense_params: dict = field(default_factory=dict, hash=False, compare=False)
    clean_fraction: float | None = None
    clean_n: int | None = None

    @property
    def attack_dir(self) -> str:
        """``<attack>`` or ``<attack>-<hash>`` when its parameters or the train budget differ."""
        params = naming_params(self.attack_params)
        extra = {"attack_params": params, "train": self.train}
        return self.attack if not (params or self.train) else f"{self.attack}-{short_hash(extra)}"

    @property
    def defense_name(self) -> str:
        return self.defense if not self.defense_params else f"{self.defense}-{short_hash(self.defense_params)}"

    @property
    def model_label(self) -> str:
        """``<dataset>/<arch>/<attack folder>/seed<s>``: the attack artifact that the cell defends."""
        return f"{self.dataset}/{self.arch}/{self.attack_dir}/seed{self.seed}"

    def artifact_path(self, artifacts: Path) -> Path:
        """The artifact folder under ``artifacts`` (by default ``<out>/artifacts``)."""
        return Path(artifacts) / self.model_label

    def result_path(self, out: Path) -> Path:
        return Path(out) / "cells" / self.model_label / f"{self.defense_name}.json"

    def failed_path(self, out: Path) -> Path:
        path = self.result_path(out)
        return path.with_name(path.name[:-len(".json")] + FAILED_SUFFIX)

    @property
    def key(self) -> dict[str, Any]:
        """The inputs, as stored in the result (``request``) and matched by ``--only``."""
        return {"dataset": self.dataset, "arch": self.arch, "attack": self.attack, "seed": self.seed,
                "defense": self.defense, "budget": self.budget, "attack_params": self.attack_params,
                "train": self.train, "defense_params": self.defense_params,
                "clean_fraction": self.clean_fraction, "clean_n": self.clean_n}

    @property
    def label(self) -> str:
        return f"{self.model_label}/{self.defense_name}"


def expand(config: BenchConfig) -> list[Cell]:
    """Every cell of every grid, in a stable order, without duplicates.

    Two grids may share cells; a cell they define differently (another budget or clean set,
    which its path does not carry) is an error: both would write the same file.
    """
    cells: dict[str, Cell] = {}
    for grid in config.grids:
        for dataset in grid.datasets:
            for arch in grid.archs:
                for attack in grid.attacks:
                    for seed in grid.seeds:
                        for defense in grid.defenses:
                            cell = Cell(dataset, arch, attack, seed, defense, grid.budget,
                                        dict(grid.attack_params.get(attack, {})), dict(grid.train),
                                        dict(grid.defense_params.get(defense, {})), grid.clean_fraction, grid.clean_n)
                            first = cells.setdefault(cell.label, cell)
                            if first.key != cell.key:
                                diff = differences(first.key, cell.key, ("in one grid", "in another"))
                                raise TacreconError(f"cell {cell.label} is defined twice, differently ({diff}): "
                                                    "split such grids into two configs with their own --out")
    return list(cells.values())


def select(cells: list[Cell], only: dict[str, list[str]]) -> list[Cell]:
    """The cells whose field matches one of the values for every key of ``only`` (an attack or a
    defense by its name or by its report name, ``<name>-<hash>``)."""
    def keep(cell: Cell) -> bool:
        return all(not names(cell, k).isdisjoint(values) for k, values in only.items())
    return [c for c in cells if keep(c)]


def names(cell: Cell, key: str) -> set[str]:
    """What ``--only key=...`` may call ``cell`` by: the field, and for an attack or a defense its
    report name (its folder or file name, with the hash of its overrides)."""
    extra = {"attack": cell.attack_dir, "defense": cell.defense_name}.get(key)
    return {str(getattr(cell, key))} | ({extra} if extra else set())
