"""Safe model files: networks saved as weights plus the name of one of our own classes.

A model file (written by :func:`save_model`, or a training checkpoint of
:func:`cocasbi.frame.training.train.train`) is a ``torch.save`` dict:

* ``version`` (int), ``class`` (a name in :data:`MODEL_CLASSES`, e.g. ``"StyledVNet"``),
  ``hparams`` (the constructor's keyword arguments, validated by the class's schema);
* ``state_dict``: CPU tensors (float32 weights);
* ``extra``: caller metadata (normalisation constants, time basis, ...) made only of tensors,
  numbers, strings, lists and dicts (:func:`to_safe` converts numpy arrays to tensors).

Files are read with ``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only, so a file cannot make Python call anything; the model is built only from the
allow-list :data:`MODEL_CLASSES`. Anything else (random bytes, a truncated file, a bare
tensor, an unknown class such as ``"subprocess:run"``, bad hyper-parameters or weights of the
wrong shape) is a one-line ValueError naming the file and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from cocasbi.frame.localnet import LocalNet
from cocasbi.frame.vnet import StyledVNet
from cocasbi.io.atomic import atomic_path

CHECKPOINT_VERSION = 2


class StyledVNetParams(BaseModel):
    """Constructor keyword arguments of :class:`~cocasbi.frame.vnet.StyledVNet`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    in_channels: int = Field(3, ge=1, le=1024, description="input field channels")
    out_channels: int = Field(3, ge=1, le=1024, description="output field channels")
    style_dim: int = Field(3, ge=1, le=64, description="length of the style vector")
    base_channels: int = Field(16, ge=1, le=512, description="width of the finest level")
    levels: int = Field(3, ge=0, le=8, description="number of down-samplings")
    residual: bool = Field(False, description="add the input to the output")
    mapping_dim: int = Field(32, ge=1, le=4096, description="width of the style mapping MLP")


class LocalNetParams(BaseModel):
    """Constructor keyword arguments of :class:`~cocasbi.frame.localnet.LocalNet`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    in_channels: int = Field(20, ge=1, le=1024, description="input field channels")
    out_channels: int = Field(12, ge=1, le=1024, description="output field channels")
    hidden: int = Field(24, ge=1, le=512, description="channels of the hidden layers")
    dilations: list[int] = Field([1, 2, 4, 1], min_length=1, max_length=16,
                                 description="dilation of each 3^3 convolution (1..16)")

    @field_validator("dilations")
    @classmethod
    def _dilations(cls, value: list[int]) -> list[int]:
        if any(not 1 <= d <= 16 for d in value):
            raise ValueError("every dilation must lie in 1..16")
        return value


#: The only classes a model file may name: name -> (class, schema of its keyword arguments).
MODEL_CLASSES: dict[str, tuple[type[nn.Module], type[BaseModel]]] = {
    "StyledVNet": (StyledVNet, StyledVNetParams),
    "LocalNet": (LocalNet, LocalNetParams),
}
#: Class names written by earlier versions (a plain string, never imported).
_LEGACY_NAMES = {"cocasbi.frame.vnet:StyledVNet": "StyledVNet"}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return ``cuda`` when available for ``device='auto'``, else the named device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_safe(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors (same dtype) and numpy scalars as Python numbers,
    recursively through dicts, lists and tuples, so that ``weights_only`` loading reads it."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "US":
            return [str(x) for x in obj.reshape(-1)] if obj.ndim else str(obj)
        return torch.from_numpy(np.array(obj, order="C"))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_safe(v) for v in obj]
    return obj


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"class": name, "hparams": kwargs}`` of an allow-listed model (its ``hparams``)."""
    for name, (cls, schema) in MODEL_CLASSES.items():
        if type(model) is cls:
            return {"class": name, "hparams": schema(**model.hparams).model_dump()}
    raise TypeError(f"{type(model).__name__} is not a model class that files may hold "
                    f"({', '.join(MODEL_CLASSES)})")


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of a model's parameters and buffers."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target directory, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_model(path: str | os.PathLike, model: nn.Module, extra: dict | None = None) -> None:
    """Write ``model`` (class name, ``model.hparams``, CPU state dict) and ``extra`` to ``path``.

    The file is written atomically and loads on a CPU-only machine whatever device the model
    lives on. ``extra`` holds caller metadata such as normalisation constants (numpy arrays
    are stored as tensors: :func:`to_safe`).
    """
    atomic_save({"version": CHECKPOINT_VERSION, **model_spec(model),
                 "state_dict": cpu_state_dict(model), "extra": to_safe(dict(extra or {}))}, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The dict stored in a model file or training checkpoint, read with
    ``weights_only=True`` (tensors on the CPU); ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable model file ({_load_error(err)})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a model file (holds a {type(obj).__name__}, not a dict)")
    missing = [k for k in ("class", "hparams", "state_dict") if k not in obj]
    if missing:
        raise ValueError(f"{path}: not a model file (missing {', '.join(missing)})")
    return obj


def _load_error(err: Exception) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds a pickled Python object {found.group(1)}; only tensors and plain "
                "data are read")
    if "Weights only load failed" in text:
        return "not a tensor file: unpickling failed"
    if "zip archive" in text or "central directory" in text:
        return "truncated or corrupt archive"
    return " ".join(text.split())[:150] or type(err).__name__


def build_model(spec: dict[str, Any], where: str = "model file") -> nn.Module:
    """A new model from ``{"class": name, "hparams": kwargs}``; only allow-listed classes
    with valid keyword arguments are built."""
    name = spec.get("class")
    name = _LEGACY_NAMES.get(name, name) if isinstance(name, str) else name
    if name not in MODEL_CLASSES:
        raise ValueError(f"{where}: model class {spec.get('class')!r} is not one of "
                         f"{sorted(MODEL_CLASSES)}")
    cls, schema = MODEL_CLASSES[name]
    hparams = spec.get("hparams")
    if not isinstance(hparams, dict):
        raise ValueError(f"{where}: hparams must be a dict, not {type(hparams).__name__}")
    try:
        kwargs = schema(**hparams).model_dump()
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        raise ValueError(f"{where}: bad {name} hyper-parameter {loc}: {e['msg']}") from None
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{where}: {name}{tuple(kwargs.items())}: {err}") from None


def load_weights(model: nn.Module, state_dict: Any, where: str = "model file") -> None:
    """``model.load_state_dict`` (strict) with a one-line ValueError on any mismatch."""
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise ValueError(f"{where}: state_dict must map names to tensors")
    expected = model.state_dict()
    if set(state_dict) != set(expected):
        extra, missing = sorted(set(state_dict) - set(expected)), sorted(set(expected) -
                                                                          set(state_dict))
        raise ValueError(f"{where}: weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for k, v in state_dict.items():
        if v.shape != expected[k].shape or not v.is_floating_point():
            raise ValueError(f"{where}: weight {k} has shape {tuple(v.shape)} {v.dtype}, "
                             f"expected {tuple(expected[k].shape)} {expected[k].dtype}")
    model.load_state_dict(state_dict)


def load_model(path: str | os.PathLike,
               map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model written by :func:`save_model` (or a training checkpoint).

    Returns ``(model, extra)`` with the model on ``map_location`` in eval mode; ``extra`` is
    the metadata given to :func:`save_model` (for a training checkpoint: the epoch, history
    and training settings). Safe for untrusted files (see the module docstring).
    """
    obj = read_checkpoint(path)
    model = build_model(obj, str(path))
    load_weights(model, obj["state_dict"], str(path))
    model.to(map_location).eval()
    if "extra" in obj:
        extra = obj["extra"]
        if not isinstance(extra, dict):
            raise ValueError(f"{path}: extra must be a dict, not {type(extra).__name__}")
        return model, extra
    try:
        return model, {"epoch": obj["epoch"], "history": obj["history"],
                       "settings": obj["settings"]}
    except KeyError as err:
        raise ValueError(f"{path}: checkpoint lacks {err.args[0]!r}") from None
