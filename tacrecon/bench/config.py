"""The grid config: YAML -> typed dataclasses; an unknown key or a wrong type is an error naming it.

A config holds one or more grids; each grid is the product datasets x archs x attacks x seeds x
defenses, with its train budget (``train``: TrainConfig overrides of the recipe), the defenses'
named ``budget`` and each method's hyperparameter overrides::

    name: smoke
    grids:
      - datasets: [digits]
        archs: [test_cnn]
        attacks: [badnets, blended]
        defenses: [none, tac, ft]
        seeds: [0]
        budget: smoke
        train: {epochs: 4}
        attack_params: {badnets: {patch_size: 2}}
        defense_params: {tac: {threshold: 3.0}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tacrecon.config import Config
from tacrecon.errors import TacreconError


def _names(key: str, values: Any, registry: Any) -> None:
    if not isinstance(values, list) or not values:
        raise TacreconError(f"{key} must be a non-empty list, got {values!r}")
    for v in values:
        registry.get(v)  # unknown names raise, listing the known ones


def _params(key: str, params: Any, allowed: list[str]) -> None:
    if not isinstance(params, dict):
        raise TacreconError(f"{key} must be a mapping of name -> {{key: value}}, got {params!r}")
    for name, values in params.items():
        if name not in allowed:
            raise TacreconError(f"{key}: {name!r} is not in this grid ({', '.join(allowed)})")
        if not isinstance(values, dict):
            raise TacreconError(f"{key}.{name} must be a mapping, got {values!r}")


@dataclass
class Grid(Config):
    """One product of datasets x archs x attacks x seeds x defenses and its budgets.

    Attributes:
        budget: the defenses' named budget (``cpu``, ``smoke``; None: the published recipe).
        train: TrainConfig overrides of the recipe for the attacked models (e.g. epochs).
        attack_params / defense_params: per-method hyperparameter overrides.
        clean_fraction / clean_n: the defender's clean set (default 5% of the training split).
    """

    datasets: list = field(default_factory=list)
    archs: list = field(default_factory=list)
    attacks: list = field(default_factory=list)
    defenses: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])
    budget: Any = None
    train: dict = field(default_factory=dict)
    attack_params: dict = field(default_factory=dict)
    defense_params: dict = field(default_factory=dict)
    clean_fraction: Any = None
    clean_n: Any = None

    def validate(self) -> None:
        from tacrecon.attacks import ATTACKS, create_attack
        from tacrecon.data import DATASETS
        from tacrecon.defenses import DEFENSES, create_defense
        from tacrecon.models import MODELS
        from tacrecon.recipes import default_train_config

        for key, registry in (("datasets", DATASETS), ("archs", MODELS), ("attacks", ATTACKS), ("defenses", DEFENSES)):
            _names(key, getattr(self, key), registry)
        if not isinstance(self.seeds, list) or not self.seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise TacreconError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds!r}")
        if self.budget is not None and not isinstance(self.budget, str):
            raise TacreconError(f"budget must be a budget name or null, got {self.budget!r}")
        if not isinstance(self.train, dict):
            raise TacreconError(f"train must be a mapping of TrainConfig overrides, got {self.train!r}")
        default_train_config(self.datasets[0], **self.train)
        _params("attack_params", self.attack_params, self.attacks)
        _params("defense_params", self.defense_params, self.defenses)
        for name, values in self.attack_params.items():
            create_attack(name, **values)
        for name in self.defenses:
            create_defense(name, self.budget, **self.defense_params.get(name, {}))
        fraction, n = self.clean_fraction, self.clean_n
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction <= 1):
            raise TacreconError(f"clean_fraction must be a number in (0, 1], got {fraction!r}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise TacreconError(f"clean_n must be a positive integer, got {n!r}")
        if fraction is not None and n is not None:
            raise TacreconError(f"give clean_fraction or clean_n, not both (got {fraction} and {n})")
        if isinstance(fraction, int):
            self.clean_fraction = float(fraction)


@dataclass
class BenchConfig(Config):
    """A named list of grids (``grids``: list of :class:`Grid` mappings)."""

    name: str = "bench"
    grids: list = field(default_factory=list)

    def validate(self) -> None:
        if not self.grids:
            raise TacreconError("a bench config needs at least one grid under `grids`")
        parsed = []
        for i, grid in enumerate(self.grids):
            if isinstance(grid, Grid):
                parsed.append(grid)
                continue
            if not isinstance(grid, dict):
                raise TacreconError(f"grids[{i}] must be a mapping, got {grid!r}")
            try:
                parsed.append(Grid.from_dict(grid))
            except TacreconError as e:
                raise TacreconError(f"grids[{i}]: {e}") from None
        self.grids = parsed


def load_config(path: str | Path) -> BenchConfig:
    """Parse and validate the YAML grid config at ``path``."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            raw = yaml.safe_load(f)  # marks in errors name the file
    except FileNotFoundError:
        raise TacreconError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise TacreconError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise TacreconError(f"{path}: cannot read the config ({e.strerror or e})") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise TacreconError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise TacreconError(f"{path}: the config must be a mapping with `name` and `grids`")
    try:
        return BenchConfig.from_dict(raw)
    except TacreconError as e:
        raise TacreconError(f"{path}: {e}") from None
