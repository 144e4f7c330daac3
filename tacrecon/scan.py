"""``scan`` and ``repair``: what a practitioner runs on a model they were handed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tacrecon.data import Dataset, Split, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.errors import TacreconError
from tacrecon.io import (atomic_write_bytes, atomic_write_json, check_output_folder, provenance, save_checkpoint,
                         tensors_to_save)
from tacrecon.loading import LoadedModel, load_any
from tacrecon.artifact import evaluate as evaluate_attack
from tacrecon.metrics import accuracy, der

log = logging.getLogger(__name__)


def clean_subset(train: Split, fraction: float | None, n: int | None, seed: int,
                 exclude: torch.Tensor | None = None) -> Split:
    """The defender's clean set: ``n`` samples (or ``fraction`` of ``train``) drawn with ``seed``,
    disjoint from the indices ``exclude`` (e.g. the poisoned ones)."""
    keep = torch.ones(len(train), dtype=torch.bool)
    if exclude is not None and exclude.numel():
        keep[exclude.cpu()] = False
    candidates = torch.nonzero(keep).flatten()
    if fraction is not None and not 0 < fraction <= 1:  # also NaN
        raise TacreconError(f"the clean fraction must be in (0, 1], got {fraction}")
    count = n if n is not None else round((fraction if fraction is not None else 0.05) * len(train))
    if not 0 < count <= candidates.numel():
        raise TacreconError(f"the clean set must hold 1..{candidates.numel()} samples, got {count}")
    g = torch.Generator().manual_seed(seed)
    pick = candidates[torch.randperm(candidates.numel(), generator=g)[:count]].sort().values
    return train.subset(pick)


def scan_record(tac: TAC, data: Dataset, seconds: float) -> dict[str, Any]:
    """The JSON record of a fitted TAC scan."""
    target = tac.target_
    return {"backdoored": target is not None, "target": target,
            "target_name": data.classes[target] if target is not None else None, "targets": tac.targets_,
            "score": tac.score, "norms": tac.scores_["norms"], "ratios": tac.scores_["ratios"],
            "anomaly_index": tac.scores_["anomaly_index"], "relative": tac.scores_["relative"],
            "p_value": tac.scores_["p_value"], "rule": tac.rule, "threshold": tac.threshold, "alpha": tac.alpha,
            "max_relative": tac.max_relative, "high_relative": tac.high_relative, "unreachable": tac.unreachable_,
            "kkt_residual": tac.scores_["kkt_residual"], "prior": tac.scores_["prior"], "seconds": seconds,
            "scan_seconds": tac.stats_["scan_seconds"],
            "second_quantile": tac.second_quantile, "second_threshold": tac.second_threshold,
            "second_max_relative": tac.second_max_relative, "second": tac.second_,
            **{k: v for k, v in tac.scores_.items() if k.startswith("second_")}}


def prepare(model: str, dataset: str, options: dict[str, Any], device: torch.device) -> tuple[LoadedModel, Dataset, Split]:
    """Load the data and the model, check that they fit each other, and draw the clean set."""
    for key in ("json", "plot"):
        if options.get(key):
            check_output_folder(Path(options[key]).parent, f"--{key}")
    if options.get("plot") and Path(options["plot"]).suffix.lower() != ".png":
        raise TacreconError(f"--plot {options['plot']}: the plot is a PNG; name it *.png")
    data = load_dataset(dataset, root=options.get("data_root"), device=device)
    loaded = load_any(model, weights=options.get("weights"), head=options.get("head"),
                      normalize=options.get("normalize"), num_classes=data.num_classes, dataset=dataset, device=device)
    check_made_for(loaded, data, model)
    probe(loaded, data)
    exclude = loaded.artifact.poison_index if loaded.artifact is not None else None
    clean = clean_subset(data.train, options.get("clean_fraction"), options.get("clean_n"), options.get("seed", 0), exclude)
    missing = sorted(set(range(data.num_classes)) - set(clean.y.unique().tolist()))
    if missing:
        raise TacreconError(f"the clean set ({len(clean)} images) holds no image of class(es) "
                            f"{', '.join(map(str, missing[:8]))}{' ...' if len(missing) > 8 else ''}: a scan needs "
                            "every class; draw more with --clean-n or --clean-fraction")
    return loaded, data, clean


def check_made_for(loaded: LoadedModel, data: Dataset, model: str) -> None:
    """An artifact must be on ``data`` (its poisoned indices index that split), a checkpoint must
    take ``data``'s image shape: one error line otherwise."""
    made_for = loaded.meta.get("dataset")
    if loaded.kind == "artifact" and made_for != data.name:
        raise TacreconError(f"{model} is an attack artifact on {made_for}, not on {data.name}: pass --dataset {made_for}")
    shape = loaded.meta.get("input_shape")
    if loaded.kind == "checkpoint" and shape is not None and tuple(shape) != tuple(data.input_shape):
        raise TacreconError(f"{model} takes {'x'.join(map(str, shape))} images, {data.name}'s are "
                            f"{'x'.join(map(str, data.input_shape))}")


@torch.no_grad()
def probe(loaded: LoadedModel, data: Dataset, n: int = 8) -> None:
    """Run the model on ``n`` training images: one error line if it cannot take them, returns no
    logits tensor (C,) per image, or (for a user's module) its output is not its head's."""
    x = data.train.x[:n]
    try:
        logits = loaded.model(x)
    except RuntimeError as e:
        raise TacreconError(f"the model cannot run on {data.name} images ({'x'.join(map(str, data.input_shape))}): "
                            f"{str(e).splitlines()[0][:200]}") from None
    if not isinstance(logits, torch.Tensor):
        raise TacreconError(f"the model returns a {type(logits).__name__}, not a tensor of logits: wrap it so that "
                            "forward returns the logits alone")
    if logits.shape != (x.shape[0], data.num_classes):
        raise TacreconError(f"the model returns shape {tuple(logits.shape)}, expected (N, {data.num_classes})")
    if loaded.kind == "module":
        loaded.model.locate(x)


def run_scan(model: str, dataset: str, device: torch.device, tac_kwargs: dict[str, Any] | None = None,
             **options: Any) -> dict[str, Any]:
    """Scan MODEL with TAC on a clean set of ``dataset``; write ``json`` / ``plot`` if given."""
    start = time.perf_counter()
    loaded, data, clean = prepare(model, dataset, options, device)
    tac = TAC.from_dict({**(tac_kwargs or {}), "repair": False}).fit(loaded.model, clean)
    record = {**scan_record(tac, data, time.perf_counter() - start), "model": model, "dataset": dataset,
              "clean_samples": len(clean), "provenance": provenance(device)}
    write_outputs(record, data, options.get("json"), options.get("plot"))
    return record


def write_outputs(record: dict[str, Any], data: Dataset, json_path: Any, plot_path: Any) -> None:
    if json_path:
        atomic_write_json(json_path, record)
    if plot_path:
        from tacrecon.report import plot_norms

        title = f"{record['model']}: " + (f"backdoor, class {record['target']} ({record['target_name']})"
                                          if record["backdoored"] else "no backdoor found")
        ratio = record["score"] == "ratio"
        if "second_relative" in record and not ratio:  # both looks, each norm over its median
            label = "norm / median norm" + (" (class-count corrected)" if record.get("prior") else "")
            plot_norms(record["relative"], record["targets"], plot_path, data.classes, title[-90:], label,
                       second=record["second_relative"], bound=record["second_max_relative"])
            return
        plot_norms(record["ratios" if ratio else "norms"], record["targets"], plot_path, data.classes, title[-90:],
                   "||s_k|| / mean per-sample distance" if ratio else "||s_k|| (minimal latent shift)")


def evaluate(loaded: LoadedModel, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    """ACC on the test split, and ASR / RA when the model came with its attack."""
    if loaded.artifact is None:
        return {"acc": accuracy(model, data.test)}
    metrics = evaluate_attack(model, loaded.artifact.attack, data)
    return {k: v for k, v in metrics.items() if v is not None}


def run_repair(model: str, dataset: str, out: str | Path, device: torch.device, tac_kwargs: dict[str, Any] | None = None,
               **options: Any) -> dict[str, Any]:
    """Scan, then fine-tune with the reconstructed TAC; write the repaired model and repair.json."""
    start = time.perf_counter()
    check_repair_folder(Path(out), model)
    loaded, data, clean = prepare(model, dataset, options, device)
    before = evaluate(loaded, loaded.model, data)
    generator = torch.Generator().manual_seed(options.get("seed", 0))
    tac = TAC.from_dict({**(tac_kwargs or {}), "repair": True}).fit(loaded.model, clean, generator)
    after = evaluate(loaded, tac.model_, data)
    record = {"scan": scan_record(tac, data, tac.stats_["scan_seconds"]), "repaired": "repair_seconds" in tac.stats_,
              "before": before, "after": after, "model": model, "dataset": dataset, "clean_samples": len(clean),
              "tac_config": tac.to_dict(), "stats": tac.stats_, "seconds": time.perf_counter() - start,
              "provenance": provenance(device)}
    if "asr" in before:
        record["der"] = der(before["acc"], after["acc"], before["asr"], after["asr"])
    save_repaired(loaded, tac.model_, Path(out), data)
    write_outputs({**record["scan"], "model": model}, data, options.get("json"), options.get("plot"))
    if getattr(tac, "surrogates_", None) is not None:  # what the fine-tune taught the model to ignore
        from tacrecon.report import plot_stand_ins

        plot_stand_ins(tac.surrogates_, tac.stats_["surrogate_targets"], Path(out) / "stand_in.png", data.classes)
        record["stand_in"] = "stand_in.png"
    atomic_write_json(Path(out) / "repair.json", record)
    return record


def check_repair_folder(out: Path, model: str) -> None:
    """Refuse an ``--out`` that would overwrite the model being repaired or another model."""
    check_output_folder(out)
    if Path(model).is_dir() and out.resolve() == Path(model).resolve():
        raise TacreconError(f"--out {out} is the model's own folder: the repaired model goes elsewhere")
    if (out / "attack.json").is_file() or ((out / "model.json").is_file() and not (out / "repair.json").is_file()):
        raise TacreconError(f"--out {out} holds another model (not an earlier repair): give a new folder")


def save_repaired(loaded: LoadedModel, model: torch.nn.Module, out: Path, data: Dataset) -> None:
    """A registered architecture is saved as a checkpoint; a user module as its own state_dict."""
    if loaded.model_kwargs is not None:
        save_checkpoint(model, out, {"arch": loaded.arch, "model_kwargs": loaded.model_kwargs, "dataset": data.name,
                                     "classes": data.classes, "input_shape": list(data.input_shape)})
        return
    from safetensors.torch import save

    inner = getattr(model, "module", model)  # the user's module inside the adapter
    atomic_write_bytes(out / "repaired.safetensors", save(tensors_to_save(inner)))
