"""Run a grid: each cell trains (or reuses) its attack artifact, runs its defense, writes one JSON.

Scheduling is a two-level graph: one job per missing attack artifact, then one job per cell of that
artifact as soon as it exists, so an artifact is trained once however many workers there are (a
file lock also keeps two concurrent ``bench`` runs from training it twice; a cell that another run
holds is skipped, not run twice). Backends: ``local``
(in-process with one worker, else a process pool) and ``ray`` (the same jobs as Ray tasks on an
existing cluster, or a local Ray instance). A failing job is recorded and the grid goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import logging
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from tacrecon.artifact import is_current
from tacrecon.attacks import ATTACKS
from tacrecon.bench.cells import Cell, expand, names, select
from tacrecon.bench.config import BenchConfig
from tacrecon.bench.estimate import estimate
from tacrecon.config import as_stored, differences
from tacrecon.defenses import create_defense
from tacrecon.errors import TacreconError
from tacrecon.io import atomic_write_json, check_output_folder, git_commit, provenance, read_json

log = logging.getLogger(__name__)

ONLY_KEYS = ("dataset", "arch", "attack", "seed", "defense")


def lock_path(path: Path) -> Path:
    """The lock file of ``path`` (an artifact folder or a cell's result): hidden, beside it."""
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on ``path`` (created if needed), released even if killed.
    Yields whether this process holds it: always True when ``wait``, else False (holding
    nothing) when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def artifact_job(cell: Cell, out: str, artifacts: str, root: str | None, device: str, threads: int | None,
                 progress: bool) -> dict[str, Any]:
    """Train (or reuse) the artifact of ``cell``; returns ``{"ok": bool, "error": str}``."""
    from tacrecon.artifact import run_attack

    _set_threads(threads)
    path = cell.artifact_path(Path(artifacts))
    try:
        with file_lock(lock_path(path)):
            record = run_attack(cell.attack, cell.dataset, cell.arch, path, root=root, device=device, seed=cell.seed,
                                config=cell.attack_params, train={**cell.train, "progress": progress},
                                retrain_outdated=True)
        return {"ok": True, "error": None, "line": f"{rates_text(record)} ({record['seconds']:.0f} s)"}
    except Exception as e:  # recorded in every cell of the artifact; the grid goes on
        log.error("artifact %s failed: %s", path, e)
        return {"ok": False, "error": f"attack artifact failed: {type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


def cell_job(cell: Cell, out: str, artifacts: str, root: str | None, device: str, threads: int | None) -> dict[str, Any]:
    """Run the defense of ``cell`` on its (existing) artifact and write its result JSON; skipped
    while another process holds the cell (its lock file beside the result)."""
    _set_threads(threads)
    with file_lock(lock_path(cell.result_path(Path(out))), wait=False) as mine:
        if not mine:  # two bench runs on one folder (or Ray nodes sharing it) planned the same cell
            log.info("cell %s is being run by another bench run: skipped", cell.label)
            return {"ok": True, "label": cell.label, "skipped": True, "line": "being run by another bench run: skipped"}
        return _run_cell(cell, out, artifacts, root, device)


def _run_cell(cell: Cell, out: str, artifacts: str, root: str | None, device: str) -> dict[str, Any]:
    """:func:`cell_job` once this run holds the cell's lock."""
    from tacrecon.artifact import load_artifact, stored_revision
    from tacrecon.commands.defend import defend_artifact
    from tacrecon.data import load_dataset
    from tacrecon.defenses import create_defense  # looked up at call time: tests stand in for it

    start = time.perf_counter()
    try:
        if cell_state(cell, Path(out)) == "done":  # finished since the plan, by another run on the same folder
            log.info("cell %s was finished by another run: skipped", cell.label)
            return {"ok": True, "label": cell.label}
        art = load_artifact(cell.artifact_path(Path(artifacts)), device)
        data = load_dataset(cell.dataset, root=root, device=device)
        defense = create_defense(cell.defense, cell.budget, **cell.defense_params)
        record = defend_artifact(defense, art, data, seed=cell.seed, clean_fraction=cell.clean_fraction,
                                 clean_n=cell.clean_n)
        attack = {k: art.record[k] for k in ("acc", "asr", "ra", "seconds", "poisoned", "attack_config", "train_config")}
        attack["attack_revision"] = stored_revision(art.record)
        result = {"status": "done", "request": cell.key, **record, "attack_record": attack,
                  "cell_seconds": time.perf_counter() - start, "provenance": provenance(device)}
        atomic_write_json(cell.result_path(Path(out)), result)
        cell.failed_path(Path(out)).unlink(missing_ok=True)
        flagged = "" if record.get("target") is None else f", flagged {record['target']}"
        return {"ok": True, "label": cell.label,
                "line": f"{rates_text(record['after'])}{flagged} ({result['cell_seconds']:.0f} s)"}
    except Exception as e:
        return record_failure(cell, out, f"{type(e).__name__}: {e}", traceback.format_exc(), device)


def rates_text(rates: dict[str, Any]) -> str:
    """``ACC 85.4%, ASR 1.0%`` of a record's rates (ASR left out for a clean model)."""
    asr = rates.get("asr")
    return f"ACC {rates['acc']:.1%}" + ("" if asr is None else f", ASR {asr:.1%}")


def record_failure(cell: Cell, out: str, error: str, trace: str | None, device: str) -> dict[str, Any]:
    """Write ``<cell>.failed.json`` (a failed cell never counts as finished)."""
    log.error("cell %s failed: %s", cell.label, error)
    atomic_write_json(cell.failed_path(Path(out)), {"status": "failed", "request": cell.key, "error": error,
                                                    "traceback": trace, "provenance": provenance(device)})
    return {"ok": False, "label": cell.label, "error": error}


def cell_state(cell: Cell, out: Path) -> str:
    """``missing``, ``done``, or ``stale``: finished under another resolved defense config, or by
    an earlier revision of the defense's code (``Defense.revision``; 1 where a record has none),
    or on an artifact made by an earlier revision of the attack's code (``Attack.revision``).

    A cell's path and request hold only the overrides, so a changed default (a new threshold, a
    budget that grew) leaves the request equal; the stored ``defense_config`` (in today's names:
    ``Defense.canonical_config``) is compared with the one this code resolves now, and a stale cell
    is run again. A result made by other inputs is an error.
    """
    path = cell.result_path(out)
    if not path.is_file():
        return "missing"
    stored = read_json(path)
    request = stored.get("request") or {}
    if request != cell.key:
        raise TacreconError(f"{path} was made by other inputs ({differences(request, cell.key)}): use another --out")
    defense = create_defense(cell.defense, cell.budget, **cell.defense_params)
    same_code = (stored.get("defense_revision", 1) == defense.revision
                 and (stored.get("attack_record") or {}).get("attack_revision", 1) == ATTACKS.get(cell.attack).revision)
    config = as_stored(type(defense).canonical_config(stored.get("defense_config") or {}))
    return "done" if same_code and config == as_stored(defense.to_dict()) else "stale"


def parse_only(items: list[str]) -> dict[str, list[str]]:
    """``["attack=badnets,blended", "seed=0"]`` -> ``{"attack": ["badnets", "blended"], "seed": ["0"]}``."""
    only: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ONLY_KEYS or not value:
            raise TacreconError(f"--only expects KEY=V1[,V2...] with KEY in {', '.join(ONLY_KEYS)}, got {item!r}")
        only.setdefault(key, []).extend(v.strip() for v in value.split(","))
    return only


class Inline:
    """Runs each job at once in this process (one worker)."""

    capacity = 1  # jobs the grid keeps in flight (a Ray cluster schedules any number itself)

    def submit(self, fn: Callable[..., dict], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(fn(*args))
        return future

    def wait(self, pending: list) -> tuple[list, list]:
        return list(pending), []

    def result(self, handle: Any) -> dict:
        return handle.result()

    def close(self) -> None:
        pass


class Pool(Inline):
    """A pool of ``workers`` spawned processes."""

    def __init__(self, workers: int) -> None:
        self.capacity = workers
        self.pool = self.new_pool()

    def new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.capacity, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[..., dict], *args: Any) -> cf.Future:
        try:
            return self.pool.submit(fn, *args)
        except BrokenProcessPool:  # a worker died (killed, out of memory): its jobs are lost, not the grid
            log.error("a worker process died: starting a new pool")
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self.new_pool()
            return self.pool.submit(fn, *args)

    def wait(self, pending: list) -> tuple[list, list]:
        done, rest = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        return list(done), list(rest)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Ray(Inline):
    """The jobs as Ray tasks (``address``: an existing cluster; None: a local Ray instance)."""

    capacity = sys.maxsize

    def __init__(self, address: str | None, threads: int | None, gpu: bool) -> None:
        try:
            import ray
        except ImportError:
            raise TacreconError("the ray backend needs Ray: pip install 'tacrecon[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads or 1)}})
        self.options = {"num_gpus": 1} if gpu else {"num_cpus": threads or 1}
        self.remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable[..., dict], *args: Any) -> Any:
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(fn).options(**self.options, max_retries=0)
        return self.remote[fn].remote(*args)

    def wait(self, pending: list) -> tuple[list, list]:
        done, rest = self.ray.wait(list(pending), num_returns=1)
        return list(done), list(rest)

    def result(self, handle: Any) -> dict:
        return self.ray.get(handle)


def make_backend(backend: str, workers: int, threads: int | None, device: str, address: str | None) -> Inline:
    if backend == "ray":
        return Ray(address, threads, device.startswith("cuda"))
    if backend != "local":
        raise TacreconError(f"backend must be local or ray, got {backend!r}")
    return Inline() if workers == 1 else Pool(workers)


def survey(config: BenchConfig, out: Path, only: dict[str, list[str]] | None = None) -> tuple[list[Cell], dict[str, str]]:
    """(all selected cells, the :func:`cell_state` of each by label)."""
    every = expand(config)
    for key, values in (only or {}).items():
        known = sorted(set().union(*(names(c, key) for c in every)))
        for value in values:
            if value not in known:
                raise TacreconError(f"--only {key}={value}: not in this config ({', '.join(known)})")
    cells = select(every, only or {})
    if not cells:
        raise TacreconError("no cell of the config matches every --only filter")
    return cells, {c.label: cell_state(c, out) for c in cells}


def plan(config: BenchConfig, out: Path, only: dict[str, list[str]] | None = None) -> tuple[list[Cell], list[Cell]]:
    """(all selected cells, those to run: missing or stale)."""
    cells, states = survey(config, out, only)
    return cells, [c for c in cells if states[c.label] != "done"]


def run_grid(config: BenchConfig, out: str | Path, *, only: dict[str, list[str]] | None = None, workers: int = 1,
             backend: str = "local", root: str | Path | None = None, device: str = "cpu",
             address: str | None = None, threads: int | None = None, dry_run: bool = False,
             progress: bool = True, artifacts: str | Path | None = None) -> dict[str, Any]:
    """Run every unfinished cell of ``config`` into ``out``; returns a summary of counts.

    Args:
        workers: parallel jobs (local backend); each gets ``threads`` torch threads (default:
            the CPU count divided by ``workers``).
        dry_run: only report what would run, and what it will cost (``summary["estimate"]``:
            :mod:`tacrecon.bench.estimate`).
        artifacts: where the attack artifacts live (default ``out/artifacts``); artifacts made
            by ``tacrecon attack`` with the same inputs can be reused from there.
    """
    if workers < 1:
        raise TacreconError(f"--workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise TacreconError(f"--threads must be >= 1, got {threads}")
    out = Path(out)
    artifacts = Path(artifacts) if artifacts is not None else out / "artifacts"
    check_output_folder(out, "--out")
    check_output_folder(artifacts, "--artifacts")
    git_commit()  # pinned now: the cells name the commit of the code this process imported
    cells, states = survey(config, out, only)
    todo = [c for c in cells if states[c.label] != "done"]
    stale = [c for c in todo if states[c.label] == "stale"]
    for cell in stale:
        log.warning("cell %s was made with another %s config or code revision, or its attack's: running it again",
                    cell.label, cell.defense)
    groups: dict[Path, list[Cell]] = {}
    for cell in todo:
        groups.setdefault(cell.artifact_path(artifacts), []).append(cell)
    missing = [p for p in groups if not is_current(p)]
    summary: dict[str, Any] = {"cells": len(cells), "finished_before": len(cells) - len(todo), "to_run": len(todo),
               "artifacts_to_train": len(missing), "stale": len(stale), "done": 0, "failed": 0, "skipped": 0}
    if dry_run:
        to_train = [groups[path][0] for path in missing]
        summary["estimate"] = estimate(todo, to_train, out, artifacts).text() if todo else "nothing to run"
    if dry_run or not todo:
        return summary
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    start = time.perf_counter()
    runner = make_backend(backend, workers, threads, device, address)
    args = (str(out), str(artifacts), None if root is None else str(root), device, threads)
    try:
        _drive(runner, groups, args, summary, progress and workers == 1 and backend == "local")
    finally:
        runner.close()
    summary["seconds"] = time.perf_counter() - start
    atomic_write_json(out / "bench.json", {"config": config.to_dict(), "last_run": summary,
                                           "provenance": provenance(device)})
    return summary


def say(bar: tqdm, name: str, result: dict[str, Any]) -> None:
    """One line on stderr for each finished job (above the progress bar on a terminal, alone in a
    log file, where the bar is off): its ``name``, its rates or its error."""
    text = result.get("line", "done") if result["ok"] else f"FAILED: {result.get('error')}"
    bar.write(f"{time.strftime('%H:%M:%S')} {name}: {text}", file=sys.stderr)


def _drive(runner: Inline, groups: dict[Path, list[Cell]], args: tuple, summary: dict[str, Any],
           inner_progress: bool) -> None:
    """Keep ``runner.capacity`` jobs in flight: the cells of a ready artifact before the next
    artifact, so finished cells land (and survive a kill) while the grid goes on, instead of after
    every artifact of the grid has been trained."""
    pending: dict[Any, tuple[str, Any]] = {}
    artifacts = list(groups)  # not submitted yet, in the grid's order
    ready: list[Cell] = []  # cells whose artifact is trained, not submitted yet
    bar = tqdm(total=sum(map(len, groups.values())), desc="grid", unit="cell", disable=None)

    def fill() -> None:
        while len(pending) < runner.capacity and (ready or artifacts):
            if ready:
                cell = ready.pop(0)
                pending[runner.submit(cell_job, cell, *args)] = ("cell", cell)
            else:
                path = artifacts.pop(0)
                pending[runner.submit(artifact_job, groups[path][0], *args, inner_progress)] = ("artifact", path)

    fill()
    while pending:
        done, _ = runner.wait(list(pending))
        for handle in done:
            kind, what = pending.pop(handle)
            try:
                result = runner.result(handle)
            except Exception as e:  # the worker itself died (a crash, the OOM killer, a lost Ray node)
                result = {"ok": False, "error": f"worker lost: {type(e).__name__}: {e}", "traceback": None}
                if kind == "cell":
                    record_failure(what, args[0], result["error"], None, args[3])
            say(bar, what.label if kind == "cell" else f"{groups[what][0].model_label} (attack model)", result)
            if kind == "artifact" and result["ok"]:
                ready.extend(groups[what])
                continue
            if kind == "artifact":
                for cell in groups[what]:
                    record_failure(cell, args[0], result["error"], result.get("traceback"), args[3])
                summary["failed"] += len(groups[what])
                bar.update(len(groups[what]))
            else:
                summary["failed" if not result["ok"] else "skipped" if result.get("skipped") else "done"] += 1
                bar.update(1)
            bar.set_postfix(failed=summary["failed"])
        fill()
    bar.close()
