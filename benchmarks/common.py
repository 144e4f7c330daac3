"""Shared by the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from tacrecon.io import atomic_write_bytes, atomic_write_json, provenance

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"

# Benchmarks run for long in the background: log every training epoch to follow them.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


START = time.perf_counter()  # the script's start: every result says how long its script ran


def write_result(name: str, record: dict[str, Any], table: str, device: str = "cpu") -> Path:
    """Write ``docs/benchmarks/<name>.json`` (record + provenance) and ``<name>.md`` (table), both
    naming the script and its arguments and the seconds it has run so far."""
    command = " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *map(shlex.quote, sys.argv[1:])])
    seconds = time.perf_counter() - START
    record = {**record, "command": command, "script_seconds": seconds, "provenance": provenance(device)}
    atomic_write_json(DOCS / f"{name}.json", record)
    prov = record["provenance"]
    header = (f"Measured on {prov['device']}, torch {prov['torch']}, commit {prov['commit']}, {prov['time']}, by "
              f"`{command}` in {seconds:.0f} s.\n\n")
    atomic_write_bytes(DOCS / f"{name}.md", (header + table).encode())
    return DOCS / f"{name}.md"


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of ``values`` (n,), ties broken by order."""
    out = torch.empty(len(values), dtype=torch.float64)
    out[torch.argsort(values, stable=True)] = torch.arange(len(values), dtype=torch.float64)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists (finite values only)."""
    ra, rb = ranks(torch.tensor(a, dtype=torch.float64)), ranks(torch.tensor(b, dtype=torch.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


TUNING = Path("docs/results/tuning")  # the tuning models (seed 100+), never reported


def tuning_folder(dataset: str, attack: str, seed: int, runs: Path = TUNING) -> Path:
    """Where a tuning model lives: CIFAR-10's (configs/tac_tuning_cpu.yaml) under
    ``runs/artifacts/cifar10/resnet_small``, GTSRB's (benchmarks/tac_class_prior_gtsrb.py) under
    ``runs/gtsrb``."""
    if dataset == "cifar10":
        return runs / "artifacts" / "cifar10" / "resnet_small" / attack / f"seed{seed}"
    return runs / dataset / attack / f"seed{seed}"


def held_out(train, used: int, count: int, seed: int, exclude: torch.Tensor):
    """``count`` clean training images outside the defender's set: clean_subset takes its ``used``
    images from the head of one seeded permutation of the unpoisoned indices; these are the next."""
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[exclude.cpu()] = False
    candidates = torch.nonzero(keep).flatten()
    perm = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))
    return train.subset(candidates[perm[used:used + count]])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pct(value: float | None) -> str:
    """A rate as a percentage, or "-" when there is none."""
    return "-" if value is None else f"{value:.2%}"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name the CPU protocol's models: reported artifacts and seeds, tuning models."""
    parser.add_argument("--artifacts", type=Path, default=Path("docs/results/cpu/artifacts"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--clean-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--tuning", type=Path, default=Path("docs/results/tuning/artifacts"))
    parser.add_argument("--data-root", default=None)


def add_tuning_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options of a benchmark that trains its own tuning models: their seeds (100 and up),
    TAC's hyperparameters, the result's name."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="TAC hyperparameters")
    parser.add_argument("--name", default=name)


def parse_tuning_arguments(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The parsed options of :func:`add_tuning_arguments` and the TAC config; an error for a seed under 100."""
    from tacrecon.cli import parse_sets

    args = parser.parse_args()
    if min(args.seeds) < 100:
        parser.error("tuning seeds are 100 and up")
    return args, parse_sets(args.config)


def model_folders(args: argparse.Namespace, attacks: Sequence[str], clean: bool = True) -> list[tuple[str, Path]]:
    """(group, folder) of every CIFAR-10 resnet_small model the options name, reported first:
    the clean models of ``--clean-seeds`` (if ``clean``), each of ``attacks`` at ``--seeds``, then
    every tuning model (its clean ones too if ``clean``). Folders without an artifact are kept."""
    base = args.artifacts / "cifar10" / "resnet_small"
    jobs = [("reported", base / "none" / f"seed{s}") for s in args.clean_seeds] if clean else []
    jobs += [("reported", base / a / f"seed{s}") for a in attacks if a != "none" for s in args.seeds]
    tuning = sorted((args.tuning / "cifar10" / "resnet_small").glob("*/seed*"))
    return jobs + [("tuning", p) for p in tuning if clean or p.parent.name != "none"]
