"""``scan``: what a practitioner runs on a model they were handed, and the checks before it.

:func:`prepare` loads the model and the data, checks that they fit each other and draws the
defender's clean set; ``repair`` (:mod:`tacrecon.commands.repair`) starts the same way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tacrecon.data import Dataset, Split, clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.errors import TacreconError
from tacrecon.io import atomic_write_json, check_output_folder, provenance
from tacrecon.loading import LoadedModel, load_any
from tacrecon.tac.repair import search_stand_ins

log = logging.getLogger(__name__)


def prepare(model: str, dataset: str, *, root: str | Path | None = None, device: torch.device | str = "cpu",
            seed: int = 0, weights: str | Path | None = None, head: str | None = None, normalize: str | None = None,
            clean_fraction: float | None = None, clean_n: int | None = None, json: str | Path | None = None,
            plot: str | Path | None = None, html: str | Path | None = None) -> tuple[LoadedModel, Dataset, Split]:
    """Load the data and the model, check that they fit each other, and draw the clean set
    (``seed``); the output paths ``json``, ``plot`` and ``html`` are checked before any work."""
    for key, path in (("json", json), ("plot", plot), ("html", html)):
        if path:
            check_output_folder(Path(path).parent, f"--{key}")
    if plot and Path(plot).suffix.lower() != ".png":
        raise TacreconError(f"--plot {plot}: the plot is a PNG; name it *.png")
    if html and Path(html).suffix.lower() not in (".html", ".htm"):
        raise TacreconError(f"--html {html}: the report is one HTML page; name it *.html")
    data = load_dataset(dataset, root=root, device=device)
    loaded = load_any(model, weights=weights, head=head, normalize=normalize, num_classes=data.num_classes,
                      dataset=dataset, device=device)
    check_made_for(loaded, data, model)
    probe(loaded, data)
    exclude = loaded.artifact.poison_index if loaded.artifact is not None else None
    clean = clean_subset(data.train, clean_fraction, clean_n, seed, exclude)
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
    logits tensor (C,) per image, returns NaN or infinite logits, or (for a user's module) its
    output is not its head's."""
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
    if not bool(torch.isfinite(logits).all()):
        raise TacreconError(f"the model's output on {n} {data.name} training images is NaN or infinite: its weights "
                            "are broken (saved after a diverged training, or NaN in the file), not its head")
    if loaded.kind == "module":
        loaded.model.locate(x)


def run_scan(model: str, dataset: str, *, config: dict[str, Any] | None = None, json: str | Path | None = None,
             plot: str | Path | None = None, html: str | Path | None = None, command: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Scan MODEL with TAC (hyperparameters ``config``, flat names; ``pairwise`` true adds the
    pairwise look, its ``pairwise_*`` keys in ``scores``) on a clean set of ``dataset``.

    ``options`` are :func:`prepare`'s (``root``, ``device``, ``seed``, ``weights``, ``head``,
    ``normalize``, ``clean_fraction``, ``clean_n``). Writes the record to ``json``, the
    per-class norms to ``plot`` (PNG) and the one-page report to ``html`` (with the stand-in
    trigger of each flagged class, searched for the page; ``command`` is shown on it) if given;
    returns the record.
    """
    start = time.perf_counter()
    loaded, data, clean = prepare(model, dataset, json=json, plot=plot, html=html, **options)
    tac = TAC.from_dict({**(config or {}), "repair": False}).fit(loaded.model, clean)
    record = {**tac.record(), "repaired": False, "model": model, "dataset": dataset, "classes": data.classes,
              "clean_samples": len(clean), "total_seconds": time.perf_counter() - start,
              "provenance": provenance(options.get("device", "cpu"))}
    write_outputs(record, json, plot)
    if html:
        deltas, stats = search_stand_ins(loaded.model, clean, tac.targets_, tac.scan_, tac.stand_in, tac.batch_size,
                                         torch.Generator().manual_seed(options.get("seed", 0)))
        write_html(html, record, clean, deltas, stats.get("stand_in_targets", []), command)
    return record


def write_html(path: str | Path, record: dict[str, Any], clean: Split, deltas: torch.Tensor | None,
               targets: list[int], command: str | None,
               patches: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None) -> None:
    """The one-page report of a TAC run: its norms, and its stand-in triggers (and a repair's
    patch stand-ins: masks, patterns, their targets) on clean images."""
    from tacrecon.page import write_page
    from tacrecon.plots import plot_patches, plot_scan, plot_stand_ins

    figures = [("Per-class latent shift norms (flagged classes in red; the dashed line is the robust look's bound)",
                plot_scan(record, None))]
    if deltas is not None:
        others = clean.x[clean.y != targets[0]][:3]
        figures.append(("The stand-in trigger of each flagged class: an input perturbation whose latent change "
                        "reproduces the class's shift, beside clean images with it added",
                        plot_stand_ins(deltas, targets, None, record["classes"], others)))
    if patches is not None:
        masks, patterns, patch_targets = patches
        others = clean.x[clean.y != patch_targets[0]][:3]
        figures.append(("The patch stand-in of each repaired class: the most effective small patch towards it, "
                        "stamped on part of the fine-tune's images with their true labels",
                        plot_patches(masks, patterns, patch_targets, None, record["classes"], others)))
    write_page(path, record, figures, command)


def write_outputs(record: dict[str, Any], json_path: str | Path | None, plot_path: str | Path | None) -> None:
    """The record of a TAC run as JSON, and its per-class norms as a bar chart (PNG)."""
    if json_path:
        atomic_write_json(json_path, record)
    if plot_path:
        from tacrecon.plots import plot_scan

        plot_scan(record, plot_path)
