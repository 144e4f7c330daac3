"""Load the model a user hands us, whatever it is, with the tacrecon contract.

MODEL can be:

* a tacrecon checkpoint folder (``model.json``) or attack artifact folder (``attack.json``);
* ``path/to/file.py:Name`` with ``weights`` (.safetensors, or a state_dict .pt read with
  ``weights_only=True``): ``Name`` is a class or factory called with no arguments;
* a BackdoorBench ``attack_result.pt`` record (model name + state_dict), read with
  ``weights_only=True`` and wrapped with BackdoorBench's per-dataset normalization.

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
BACKDOORBENCH_MODELS = {"preactresnet18": "preact_resnet18", "vgg11_bn": "vgg11_bn"}


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
    """What rebuilding plain numpy arrays needs (no code runs: array data and dtypes only)."""
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2's pickle entry point
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")]
    numpy1 = [(_reconstruct, "numpy.core.multiarray._reconstruct")]  # records written under numpy 1
    return [_reconstruct, *numpy1, np.ndarray, np.dtype, *dtypes]


def load_backdoorbench(path: Path, dataset: str | None) -> LoadedModel:
    """A BackdoorBench ``attack_result.pt``: its model, normalizing with BackdoorBench's statistics."""
    try:
        with torch.serialization.safe_globals(numpy_globals()):  # bd_train / bd_test hold numpy arrays
            record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refuse anything weights_only cannot read
        raise TacreconError(f"{path}: cannot read safely ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(record, dict) or "model_name" not in record or "model" not in record:
        raise TacreconError(f"{path}: not a BackdoorBench attack record (needs model_name and model)")
    name = BACKDOORBENCH_MODELS.get(str(record["model_name"]))
    if name is None:
        raise TacreconError(f"{path}: BackdoorBench model {record['model_name']!r} is not supported; "
                            f"supported: {', '.join(BACKDOORBENCH_MODELS)}")
    data_name = dataset or str(record.get("clean_data", ""))
    if data_name not in BACKDOORBENCH_STATS:
        raise TacreconError(f"{path}: no BackdoorBench normalization known for data set {data_name!r} (known: "
                            f"{', '.join(BACKDOORBENCH_STATS)})")
    mean, std = BACKDOORBENCH_STATS[data_name]
    kwargs: dict[str, Any] = {"num_classes": int(record.get("num_classes", 10)), "in_chans": 3, "mean": list(mean),
                              "std": list(std)}
    model = create_model(name, **kwargs)
    state = {k.removeprefix("module."): v for k, v in record["model"].items()}
    load_state(model, state, str(path))
    return LoadedModel(model.eval(), "backdoorbench", name, {"clean_data": data_name}, model_kwargs=kwargs)


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
