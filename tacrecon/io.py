"""Atomic files, provenance, and model checkpoints (safetensors weights + a JSON description).

Nothing here unpickles untrusted data: weights are read with safetensors, or with
``torch.load(weights_only=True)`` for ``.pt`` files.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tacrecon.errors import TacreconError

MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: files get the permissions any other file written here would get


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def jsonable(value: Any) -> Any:
    """``value`` with tensors turned into lists/numbers and non-finite floats into None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file is a :class:`TacreconError`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TacreconError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TacreconError(f"{path}: not valid JSON ({e})") from None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the tacrecon source tree (with ``+dirty`` if the package's own files are
    modified; result files beside it do not count), or None.

    Read once per process: a long run (a benchmark grid) keeps the code it imported, so its
    results name that code's commit, not the one checked out by the time they are written.
    """
    package = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(package.parent), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(package.parent), "status", "--porcelain", "--untracked-files=no",
                                "--", str(package)], capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device | str) -> str:
    """A human description of ``device``: the GPU's name, or the CPU's core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where a result came from: code commit, versions, device, UTC time."""
    from tacrecon import __version__

    return {"tacrecon": __version__, "commit": git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device_name(device),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a ``.pt``/``.pth`` file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise TacreconError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise TacreconError(f"{path}: cannot read weights (not a torch state_dict file)") from None
        raise TacreconError(f"{path}: holds pickled Python objects (a whole model?), which are never loaded, for "
                            "safety: save model.state_dict() instead and pass file.py:Name --weights") from None
    except Exception as e:  # noqa: BLE001 - any decoding failure is the user's file
        raise TacreconError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TacreconError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` strictly, with a one-line error naming what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("shape mismatch", shapes)) if keys]
        raise TacreconError(f"{source}: weights do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state)


def check_output_folder(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a folder to write into: an error now (before any work) if it is a file or lies
    under one."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise TacreconError(f"{what} {path}: {existing} is a file, not a folder")
    return path


def tensors_to_save(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state_dict on the CPU, every tensor its own copy (safetensors refuses tensors
    that share memory, as tied weights do; loading back ties nothing but gives equal values)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(model: nn.Module, out_dir: str | Path, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``model.json`` (``meta`` must name ``arch`` and ``model_kwargs``)."""
    from safetensors.torch import save

    if "arch" not in meta or "model_kwargs" not in meta:
        raise ValueError("checkpoint meta needs 'arch' and 'model_kwargs'")
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / MODEL_WEIGHTS, save(tensors_to_save(model)))
    atomic_write_json(out_dir / MODEL_JSON, {"format": "tacrecon-model", "version": 1, **meta})
