"""Loading a checkpoint written by :func:`tacrecon.io.save_checkpoint`: the registered
architecture it names, built with its keyword arguments, with its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tacrecon.errors import TacreconError
from tacrecon.io import MODEL_JSON, MODEL_WEIGHTS, load_state, load_weights, read_json
from tacrecon.models.nets import create_model


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model saved by :func:`save_checkpoint` in folder ``path``, in eval mode, and its meta."""
    path = Path(path)
    meta = read_json(path / MODEL_JSON)
    if (not isinstance(meta, dict) or meta.get("format") != "tacrecon-model" or not isinstance(meta.get("arch"), str)
            or not isinstance(meta.get("model_kwargs"), dict)):
        raise TacreconError(f"{path / MODEL_JSON}: not a tacrecon model description (format, arch, model_kwargs)")
    try:
        model = create_model(meta["arch"], **meta["model_kwargs"])
    except TypeError as e:
        raise TacreconError(f"{path / MODEL_JSON}: its model_kwargs do not fit {meta['arch']!r} ({e})") from None
    load_state(model, load_weights(path / MODEL_WEIGHTS), str(path / MODEL_WEIGHTS))
    return model.to(device).eval(), meta
