"""What a grid's unfinished part will cost, from the seconds its finished part took.

A researcher planning a long run (``tacrecon bench --dry-run``) wants hours, not a list of cells.
Each unfinished cell is priced at the median ``cell_seconds`` of its peers: finished cells in the
same output folder with the same data set, architecture, defense and resolved defense config (a
recipe and a reduced budget of one defense are not peers), and each attack model still to train
at the median training seconds of finished artifacts of its data set and architecture (its own
attack's where there are any). A cell or model without a peer is counted, not priced. The figures
are job-hours as measured: a job that ran with more threads or beside another job took what it
took.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from tacrecon.artifact import ATTACK_JSON
from tacrecon.bench.cells import FAILED_SUFFIX, Cell
from tacrecon.config import as_stored
from tacrecon.defenses import DEFENSES, create_defense
from tacrecon.io import read_json


@dataclass
class Estimate:
    """The priced part of a plan: seconds of the priced cells and models, and what has no peer."""

    cell_seconds: dict[str, float]  # cell label -> median seconds of its peers
    model_seconds: dict[str, float]  # model label -> median seconds of its peers
    cells_unpriced: int
    models_unpriced: int

    @property
    def hours(self) -> float:
        return (sum(self.cell_seconds.values()) + sum(self.model_seconds.values())) / 3600

    def text(self) -> str:
        """One line: ``about X job-hours (...)``, saying what could not be priced."""
        line = (f"about {self.hours:.1f} job-hours ({len(self.cell_seconds)} cells and {len(self.model_seconds)} "
                f"attack models priced at the median seconds of their finished peers")
        missing = [f"{n} {what}" for n, what in ((self.cells_unpriced, "cells"),
                                                  (self.models_unpriced, "attack models")) if n]
        return line + (f"; {' and '.join(missing)} without a finished peer, not counted)" if missing else ")")


def defense_key(dataset: str, arch: str, defense: str, config: dict) -> str:
    return json.dumps([dataset, arch, defense, as_stored(config)], sort_keys=True)


def finished_cells(out: Path) -> dict[str, list[float]]:
    """Seconds of every finished cell under ``out/cells``, by :func:`defense_key` (its stored
    config in today's names)."""
    seconds: dict[str, list[float]] = {}
    for path in sorted((out / "cells").glob("*/*/*/*/*.json")):
        record = read_json(path)
        if path.name.endswith(FAILED_SUFFIX) or record.get("defense") not in DEFENSES.names():
            continue
        config = DEFENSES.get(record["defense"]).canonical_config(record.get("defense_config") or {})
        took = record.get("cell_seconds", record.get("seconds"))
        if took is not None:
            key = defense_key(record["dataset"], record["arch"], record["defense"], config)
            seconds.setdefault(key, []).append(float(took))
    return seconds


def trained_models(artifacts: Path) -> dict[tuple[str, ...], list[float]]:
    """Training seconds of every finished artifact, by (data set, arch) and (data set, arch, attack)."""
    seconds: dict[tuple[str, ...], list[float]] = {}
    for path in sorted(artifacts.glob(f"*/*/*/*/{ATTACK_JSON}")):
        record = read_json(path)
        if "seconds" not in record:
            continue
        for key in ((record["dataset"], record["arch"]), (record["dataset"], record["arch"], record["attack"])):
            seconds.setdefault(key, []).append(float(record["seconds"]))
    return seconds


def estimate(todo: list[Cell], to_train: list[Cell], out: Path, artifacts: Path) -> Estimate:
    """Price ``todo`` (cells not finished) and ``to_train`` (one cell per attack model not trained
    yet) from the finished cells under ``out`` and artifacts under ``artifacts``."""
    cells = finished_cells(out)
    priced: dict[str, float] = {}
    for cell in todo:
        defense = create_defense(cell.defense, cell.budget, **cell.defense_params)
        peers = cells.get(defense_key(cell.dataset, cell.arch, cell.defense, defense.to_dict()))
        if peers:
            priced[cell.label] = statistics.median(peers)
    models = trained_models(artifacts)
    trained: dict[str, float] = {}
    for cell in to_train:
        peers = models.get((cell.dataset, cell.arch, cell.attack)) or models.get((cell.dataset, cell.arch))
        if peers:
            trained[cell.model_label] = statistics.median(peers)
    return Estimate(priced, trained, len(todo) - len(priced), len(to_train) - len(trained))
