"""Load the model a user hands us, whatever it is, with the tacrecon contract.

MODEL can be:

* a tacrecon checkpoint folder (``model.json``) or attack artifact folder (``attack.json``);
* ``path/to/file.py:Name`` with ``weights`` (.safetensors, or a state_dict .pt read with
  ``weights_only=True``): ``Name`` is a class or factory called with no arguments;
* a BackdoorBench ``attack_result.pt`` record, as BackdoorBench 2.x (and 1.x) writes it, of a
  ``preactresnet18`` or ``vgg19_bn`` model: read with ``weights_only=True`` and wrapped with
  BackdoorBench's per-dataset normalization (see :func:`load_backdoorbench`).

Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from tacrecon.errors import TacreconError
from tacrecon.io import load_state, load_weights, read_json
from tacrecon.models import Classifier, as_classifier, create_model, load_checkpoint

# BackdoorBench normalizes in its data pipeline with these statistics (GTSRB: identity).
BACKDOORBENCH_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}
# BackdoorBench's model names (generate_cls_model) -> ours, whose state_dict names are its own.
BACKDOORBENCH_MODELS = {"preactresnet18": "preact_resnet18", "vgg19_bn": "vgg19_bn"}


@dataclass
class LoadedModel:
    """A classifier with the contract, what it is, and (for artifacts) the attack that made it."""

    model: Classifier
    kind: str  # checkpoint | artifact | module | backdoorbench
    arch: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    artifact: Any = None  # tacrecon.artifact.Artifact for attack artifacts
    model_kwargs: dict[str, Any] | None = None  # rebuilds a registered ``arch`` (None: user module)


def parse_stats(text: str | None) -> tuple[list[float], list[float]] | None:
    """``"0.5,0.5,0.5,0.25,0.25,0.25"`` or ``"0.5,0.25"`` -> (mean, std) lists; None passes through."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise TacreconError(f"--normalize expects MEAN,...,STD,... numbers, got {text!r}") from None
    if len(values) % 2 or not values:
        raise TacreconError(f"--normalize needs as many std values as mean values, got {len(values)} numbers")
    half = len(values) // 2
    return values[:half], values[half:]


def import_factory(spec: str):
    """The object ``Name`` of ``file.py:Name`` (the file is run as a module)."""
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise TacreconError(f"{path}: no such model file")
    module_name = f"tacrecon_user_{abs(hash(path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise TacreconError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed: say so in one line
        raise TacreconError(f"{path}: importing it failed ({type(e).__name__}: {e})") from None
    if not hasattr(module, name):
        raise TacreconError(f"{path} defines no {name!r}")
    return getattr(module, name)


def load_module(spec: str, weights: str | Path | None, num_classes: int | None, head: str | None,
                normalize: tuple[Sequence[float], Sequence[float]] | None) -> LoadedModel:
    """A user-defined ``nn.Module`` from ``file.py:Name`` with ``weights``, wrapped by the adapter."""
    factory = import_factory(spec)
    try:
        module = factory()
    except TypeError as e:
        raise TacreconError(f"{spec}: cannot be called with no arguments ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's constructor failed: say so in one line
        raise TacreconError(f"{spec}: building the model failed ({type(e).__name__}: {e})") from None
    if not isinstance(module, nn.Module):
        raise TacreconError(f"{spec} returned a {type(module).__name__}, not an nn.Module")
    if weights is None:
        raise TacreconError(f"{spec}: give its weights with --weights")
    load_state(module, load_weights(weights), str(weights))
    mean, std = normalize if normalize else (None, None)
    model = as_classifier(module.eval(), num_classes, head, mean, std)
    return LoadedModel(model, "module", spec, {"weights": str(weights)})


def numpy_globals() -> list[Any]:
    """What rebuilding plain numpy arrays and scalars needs (no code runs: array data and dtypes only)."""
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy 2's pickle entry points
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")]
    numpy1 = [(_reconstruct, "numpy.core.multiarray._reconstruct"),  # records written under numpy 1
              (scalar, "numpy.core.multiarray.scalar")]
    numpy2 = [(_reconstruct, "numpy._core.multiarray._reconstruct"), (scalar, "numpy._core.multiarray.scalar")]
    return [_reconstruct, scalar, *numpy1, *numpy2, np.ndarray, np.dtype, *dtypes]


class DroppedImage:
    """What a pickled PIL image in a record becomes: nothing of it is kept and no PIL code runs.

    BackdoorBench 1.x records hold their poisoned samples as PIL images (``bd_train``/``bd_test``
    ``x``); a scan needs only the model, so each image is read past, not rebuilt.
    """

    def __setstate__(self, state: Any) -> None:
        pass


PIL_IMAGE_CLASSES = ("PIL.Image.Image", "PIL.PngImagePlugin.PngImageFile", "PIL.JpegImagePlugin.JpegImageFile")


def read_record(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with numpy arrays and scalars allowed and PIL images dropped."""
    allowed = [*numpy_globals(), *((DroppedImage, name) for name in PIL_IMAGE_CLASSES)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refuse anything weights_only cannot read, naming it
        lines = str(e).splitlines() or [type(e).__name__]
        unsafe: list[str] = []
        finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if finder is not None:
            try:
                names = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in allowed}
                unsafe = [g for g in finder(path) if g not in names]
            except Exception:  # noqa: BLE001 - the list only improves the message
                unsafe = []
        if unsafe:
            raise TacreconError(f"{path}: holds pickled Python objects ({', '.join(unsafe[:3])}"
                                f"{' ...' if len(unsafe) > 3 else ''}), which are never unpickled (only tensors, numpy "
                                "arrays and plain values are read); save its 'model' state_dict alone and pass "
                                "file.py:Name --weights W") from None
        reason = next((line.strip() for line in lines if "Unsupported" in line or "Can only" in line), lines[0])
        raise TacreconError(f"{path}: cannot read safely ({type(e).__name__}: {reason[:160]})") from None


def record_version(record: dict) -> str:
    """Which BackdoorBench wrote a record, from how its ``bd_test`` holds the poisoned test set.

    2.x stores ``prepro_cls_DatasetBD_v2.retrieve_state()`` (``bd_data_container``,
    ``original_index_array``, ``poison_indicator``, ...; the images are PNG files beside the
    record); 1.x stores the samples themselves (``x``, ``y``, ``original_index``, ...).
    """
    bd_test = record.get("bd_test")
    if isinstance(bd_test, dict) and "bd_data_container" in bd_test:
        return "2.x"
    if isinstance(bd_test, dict) and "x" in bd_test:
        return "1.x"
    return "unknown"


def load_backdoorbench(path: Path, dataset: str | None) -> LoadedModel:
    """A BackdoorBench ``attack_result.pt``: its model, normalizing with BackdoorBench's statistics.

    The record is a dict (``save_attack_result``): ``model_name``, ``num_classes``, ``model`` (the
    state_dict, ``module.``-prefixed after DataParallel), ``data_path``, ``img_size``,
    ``clean_data`` (the data set's name), ``bd_train`` and ``bd_test`` (see
    :func:`record_version`). Only the model and the data set's name are used.
    """
    record = read_record(path)
    if not isinstance(record, dict) or "model_name" not in record or "model" not in record:
        raise TacreconError(f"{path}: not a BackdoorBench attack record (needs model_name and model)")
    if not isinstance(record["model"], dict) or not all(isinstance(v, torch.Tensor) for v in record["model"].values()):
        raise TacreconError(f"{path}: the record's model is not a state_dict (a mapping of names to tensors)")
    arch = str(record["model_name"])
    data_name = dataset or str(record.get("clean_data", ""))
    stats = BACKDOORBENCH_STATS.get(data_name)
    name = BACKDOORBENCH_MODELS.get(arch)
    if name is None:
        hint = f" --normalize {','.join(str(v) for v in (*stats[0], *stats[1]))}" if stats else ""
        raise TacreconError(f"{path}: BackdoorBench model {arch!r} has no tacrecon architecture (records load for "
                            f"{' and '.join(BACKDOORBENCH_MODELS)}); build it as BackdoorBench does in a file.py and "
                            f"pass file.py:Name --weights W{hint}, W being this record's 'model' state_dict saved alone")
    if stats is None:
        raise TacreconError(f"{path}: no BackdoorBench normalization known for data set {data_name!r} (known: "
                            f"{', '.join(BACKDOORBENCH_STATS)})")
    mean, std = stats
    kwargs: dict[str, Any] = {"num_classes": int(record.get("num_classes", 10)), "in_chans": 3, "mean": list(mean),
                              "std": list(std)}
    model = create_model(name, **kwargs)
    state = {k.removeprefix("module."): v for k, v in record["model"].items()}
    load_state(model, state, str(path))
    meta = {"clean_data": data_name, "backdoorbench_model": arch, "record_version": record_version(record)}
    return LoadedModel(model.eval(), "backdoorbench", name, meta, model_kwargs=kwargs)


def load_any(spec: str, *, weights: str | Path | None = None, head: str | None = None,
             normalize: str | None = None, num_classes: int | None = None, dataset: str | None = None,
             device: torch.device | str = "cpu") -> LoadedModel:
    """Load MODEL ``spec`` (see the module docstring) onto ``device``."""
    path = Path(spec)
    stats = parse_stats(normalize)
    is_module = ":" in spec and spec.rpartition(":")[0].endswith(".py") and not path.exists()
    unused = [flag for flag, value in (("--weights", weights), ("--head", head), ("--normalize", normalize))
              if value is not None]
    if unused and not is_module:
        verb = "applies" if len(unused) == 1 else "apply"
        raise TacreconError(f"{' and '.join(unused)} {verb} to a file.py:Name model only; {spec} carries its own")
    if path.is_dir():
        if (path / "attack.json").is_file():
            from tacrecon.artifact import load_artifact

            art = load_artifact(path, device)
            kwargs = read_json(path / "model.json")["model_kwargs"]
            loaded = LoadedModel(as_classifier(art.model), "artifact", art.record["arch"], art.record, art, kwargs)
        elif (path / "model.json").is_file():
            model, meta = load_checkpoint(path, device)
            loaded = LoadedModel(as_classifier(model), "checkpoint", meta["arch"], meta, None, meta["model_kwargs"])
        else:
            raise TacreconError(f"{path}: a folder, but neither a tacrecon checkpoint nor an attack artifact")
    elif path.suffix == ".pt" and path.is_file():
        loaded = load_backdoorbench(path, dataset)
    elif is_module:
        loaded = load_module(spec, weights, num_classes, head, stats)
    elif not path.exists():
        raise TacreconError(f"{spec}: no such file or folder")
    else:
        raise TacreconError(f"{spec}: not a checkpoint folder, an attack artifact, a file.py:Name or an "
                            "attack_result.pt")
    if num_classes is not None and loaded.model.num_classes != num_classes:
        raise TacreconError(f"the model has {loaded.model.num_classes} classes but the dataset has {num_classes}")
    loaded.model.to(device).eval()
    return loaded
