"""The validated settings of a V-net frame training run (:class:`VNetTrainingConfig`).

Usable from Python (``VNetTrainingConfig(epochs=50)``), from YAML
(:meth:`VNetTrainingConfig.from_yaml`, keys as the field names) and from the ``cocasbi frame
train`` options (which override the YAML file's values). Unknown keys, wrong types and values
outside the documented ranges are errors (:class:`cocasbi.config.ConfigError`, a ValueError).
Where a run executes (``device``) and whether it resumes are not part of the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cocasbi.config import ConfigError


class VNetTrainingConfig(BaseModel):
    """Settings of :func:`cocasbi.frame.training.neural.train_vnet_frame`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    K: int = Field(4, ge=1, le=16, description=(
        "number of time-basis functions; the network predicts 3K coefficient channels"))
    n_val: int = Field(2, ge=0, le=10_000, description=(
        "simulations (the last ones) held out for validation; 0 = none"))
    epochs: int = Field(20, ge=1, le=1_000_000, description=(
        "training epochs (the length of the cosine learning-rate schedule)"))
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak Adam learning rate")
    batch_size: int = Field(4, ge=1, le=4096, description="simulations per Adam step")
    crop: int | None = Field(None, ge=1, le=4096, description=(
        "train on random periodic sub-volumes of this side [cells], a multiple of "
        "2**levels; None = whole boxes"))
    base_channels: int = Field(16, ge=1, le=512, description="width of the finest V-net level")
    levels: int = Field(3, ge=0, le=8, description=(
        "down-samplings of the V-net; grid sides must be multiples of 2**levels"))
    seed: int = Field(0, ge=0, description=(
        "seeds the network initialisation, shuffling and crop offsets"))
    base: Literal["transfer", "none"] = Field("transfer", description=(
        "'transfer': learn the correction to a transfer model fitted on the same data "
        "(the untrained net is that model); 'none': learn the coefficients directly"))
    degree: int = Field(1, ge=0, le=2, description=(
        "polynomial degree in the normalised (Omega_m, sigma8) of the base transfer model"))
    time_budget_s: float | None = Field(None, gt=0.0, description=(
        "stop after the last whole epoch that fits in this many seconds [s], with the "
        "cosine schedule shortened to the epochs the budget allows; None = no limit"))
    grad_clip: float | None = Field(1.0, gt=0.0, description=(
        "clip the global gradient norm to this value; None = no clipping"))
    density: bool = Field(True, description=(
        "add the lattice divergences of Psi1, Psi2 as inputs (8 channels instead of 6)"))
    keep_best: bool = Field(True, description=(
        "save the weights of the epoch with the lowest validation loss (else the last)"))
    common_scale: bool = Field(True, description=(
        "normalise all K targets by one scale, so the loss is the frame's mean squared error"))

    @model_validator(mode="after")
    def _crop_fits_levels(self):
        step = 2**self.levels
        if self.crop is not None and self.crop % step:
            raise ValueError(f"crop={self.crop} must be a multiple of 2**levels={step}")
        return self

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> VNetTrainingConfig:
        """Validated config from a mapping; ConfigError naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: training config must be a mapping, "
                              f"not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            msg = msg.removeprefix("Value error, ")
            raise ConfigError(f"{source}: training config {loc}: {msg}" if loc
                              else f"{source}: training config: {msg}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> VNetTrainingConfig:
        """Config from a YAML mapping of field names, with ``overrides`` (None values are
        ignored) taking precedence."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read training config {path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") \
                from None
        data = {} if data is None else data
        if isinstance(data, dict):
            data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        return cls.from_dict(data, str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)
