"""Campaign configuration: what to simulate (producer, prior, design, size) and where to run.

Everything is validated when the file is loaded, before anything is written: unknown keys,
repeated YAML keys, wrong types (``true`` is not a number), NaN / inf, a prior bound outside a
parameter's range, an unknown summary or producer, COCA without a frame, a missing frame file,
a malformed force schedule, kmin > kmax, a campaign too large for the seed tree or a simulation
too large for the memory. Each error is one line that names the field.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cocasbi.config import ConfigError, read_yaml, resolve_config_path
from cocasbi.forward import ForwardSpec
from cocasbi.prior import DESIGNS, BoxPrior

#: The most simulations one plan may hold (the plan stores θ and seeds in memory, and a run
#: lists one file per simulation in a directory; the seed tree allows 2**31).
MAX_SIMULATIONS = 10_000_000

#: Producer kinds built in; any other kind needs a ``producer.factory``.
BUILTIN_KINDS = ("summaries", "frame_samples")


def _strict_number(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be finite, not {value!r}")
    return value


def _strict_int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {value!r}")
    return value


Number = Annotated[float, BeforeValidator(_strict_number)]
Integer = Annotated[int, BeforeValidator(_strict_int)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobqueueConfig(_Frozen):
    """A dask-jobqueue cluster (``pip install cocasbi[cluster]``)."""

    system: Literal["slurm", "pbs", "sge", "lsf", "htcondor"]
    jobs: Integer = Field(1, ge=1, le=10_000, description="batch jobs to start")
    options: dict = Field(default_factory=dict,
                          description="keyword arguments of e.g. SLURMCluster (cores, memory, ...)")


class ExecutionConfig(_Frozen):
    """Where and how simulations run; may change between runs of the same plan."""

    scheduler: str | None = Field(
        None, description="address of a running Dask scheduler, or a scheduler JSON file")
    workers: Integer = Field(0, ge=0, le=4096,
                             description="LocalCluster worker processes; 0 = auto")
    threads_per_worker: Integer = Field(0, ge=0, le=1024,
                                        description="threads per simulation; 0 = auto")
    timeout: Number | None = Field(600.0, gt=0, description="per-simulation limit [s]")
    dashboard_address: str | None = Field(
        None, description="Dask dashboard, e.g. '127.0.0.1:8787'; None = off (default)")
    jobqueue: JobqueueConfig | None = None

    @field_validator("dashboard_address", mode="before")
    @classmethod
    def _loopback(cls, value):
        """``true`` means 127.0.0.1:8787; ``:PORT`` listens on loopback only."""
        if value is True:
            return "127.0.0.1:8787"
        if value is False:
            return None
        if isinstance(value, str):
            if value.startswith(":"):
                value = "127.0.0.1" + value
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"dashboard address {value!r} is not HOST:PORT")
        return value


#: Producer factories a configuration may name. A name read from a file is never imported
#: unless it is here: a campaign directory or YAML file must not be able to run arbitrary code
#: (``subprocess:run``). Add your own from Python with :func:`trust_producer_factory`.
TRUSTED_FACTORIES: set[str] = {"cocasbi.certify.farm:campaign_producer"}


def trust_producer_factory(name: str) -> None:
    """Allow configurations to name the producer factory ``"package.module:callable"`` in this
    process (call it from your own code before planning or running such a campaign)."""
    TRUSTED_FACTORIES.add(str(name))


class ProducerSpec(_Frozen):
    """A producer built by ``factory`` (``"package.module:callable"``, one of
    :data:`TRUSTED_FACTORIES`), called as ``factory(config, threads=threads, **options)`` with
    the campaign configuration."""

    factory: str
    options: dict = Field(default_factory=dict)

    @field_validator("factory")
    @classmethod
    def _importable(cls, value: str):
        module, _, attr = value.partition(":")
        if not module or not attr:
            raise ValueError(f"factory {value!r} must look like 'package.module:callable'")
        return value

    def load(self):
        if self.factory not in TRUSTED_FACTORIES:
            raise ValueError(f"producer factory {self.factory!r} is not trusted: a configuration "
                             "may only name "
                             f"{', '.join(sorted(TRUSTED_FACTORIES))} (add yours from Python "
                             "with cocasbi.campaign.config.trust_producer_factory)")
        module, _, attr = self.factory.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"producer factory {self.factory!r} cannot be imported: "
                             f"{err}") from None


class CampaignConfig(_Frozen):
    """A campaign: producer kind, forward model, prior box, design, size, master seed,
    execution."""

    name: str = "campaign"
    directory: Path = Path("output/campaign")
    kind: str = Field("summaries", description="what each task stores: summaries, "
                                               "frame_samples, or the kind of `producer`")
    n_simulations: Integer = Field(..., ge=1, le=MAX_SIMULATIONS)
    master_seed: Integer = Field(..., ge=0, lt=2**63)
    design: Literal["latin_hypercube", "uniform"] = "latin_hypercube"
    prior: dict[str, tuple[Number, Number]] = Field(
        ..., description="parameter → (low, high), a uniform box over forward.parameters")
    forward: ForwardSpec = ForwardSpec()
    producer: ProducerSpec | None = None
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("prior", mode="before")
    @classmethod
    def _prior_pairs(cls, value):
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping parameter: [low, high], not {value!r}")
        out = {}
        for name, bounds in value.items():
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise ValueError(f"{name}: give [low, high], not {bounds!r}")
            out[name] = tuple(bounds)
        return out

    @field_validator("forward", mode="before")
    @classmethod
    def _forward_numbers(cls, value):
        if isinstance(value, dict):
            for key in ("kmin", "kmax", "dk"):
                if value.get(key) is not None:
                    try:
                        _strict_number(value[key])
                    except ValueError as err:
                        raise ValueError(f"{key} {err}") from None
            for key in ("parameters", "summaries"):
                if isinstance(value.get(key), str):
                    raise ValueError(f"{key} must be a list, not the string {value[key]!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind not in BUILTIN_KINDS and self.producer is None:
            raise ValueError(f"kind {self.kind!r} needs a producer.factory (built-in kinds: "
                             f"{', '.join(BUILTIN_KINDS)})")
        if set(self.prior) != set(self.forward.parameters):
            raise ValueError(f"prior names {sorted(self.prior)} must be the forward "
                             f"parameters {list(self.forward.parameters)}")
        if self.prior:
            self.box_prior()  # bounds finite, ordered, inside each parameter's range
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r}")
        if self.execution.jobqueue and self.execution.scheduler:
            raise ValueError("execution: give a scheduler or a jobqueue, not both")
        return self

    def box_prior(self) -> BoxPrior | None:
        """The prior box, θ in the order of ``forward.parameters`` (None when no parameter
        varies: every simulation then differs only in its seed)."""
        if not self.prior:
            return None
        return BoxPrior.from_dict(self.prior, names=self.forward.parameters)

    def resolved(self) -> CampaignConfig:
        """A copy with the simulation config inlined, so the campaign is self-contained."""
        spec = self.forward.model_copy(
            update={"config": self.forward.simulation_config().model_dump(mode="json")})
        return self.model_copy(update={"forward": spec})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return "; ".join(parts)


def campaign_config_from_dict(data: Any, source: str = "<dict>",
                              base: Path | None = None) -> CampaignConfig:
    """Validate a campaign mapping; a relative ``forward.config`` / ``forward.frame`` path is
    taken relative to ``base`` (the campaign file's folder). ConfigError on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a campaign must be a mapping, not {type(data).__name__}")
    _reject_nonfinite(data, source)
    forward = data.get("forward")
    if base is not None and isinstance(forward, dict):
        forward = dict(forward)
        for key in ("config", "frame"):
            value = forward.get(key)
            if isinstance(value, str) and Path(value).suffix and not Path(value).is_absolute():
                forward[key] = str(base / value)
        data = {**data, "forward": forward}
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid campaign configuration {source}: {_one_line(err)}") from None
    except ValueError as err:  # raised outside pydantic's wrapping (e.g. a nested loader)
        raise ConfigError(f"invalid campaign configuration {source}: {err}") from None


def _reject_nonfinite(data, where: str, path: str = "") -> None:
    """ConfigError naming the first NaN or infinite number anywhere in ``data``."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"invalid campaign configuration {where}: {path or 'value'} is "
                          f"{data}, numbers must be finite")
    if isinstance(data, dict):
        for key, value in data.items():
            _reject_nonfinite(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            _reject_nonfinite(value, where, f"{path}[{i}]")


def load_campaign_config(path: str | Path) -> CampaignConfig:
    """Load a campaign YAML file, or a built-in one by name (``campaign_tiny``:
    ``configs/campaign/campaign_tiny.yaml``). Relative paths inside it are relative to it."""
    if Path(path).is_dir():
        raise ConfigError(f"{path} is a directory, not a campaign YAML file")
    path = resolve_config_path(path, "campaign configuration", kind="campaign")
    try:
        data = read_yaml(path)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    return campaign_config_from_dict(data, str(path), base=path.parent)


def check_frame_source(frame: str | None) -> None:
    """ValueError if a COCA frame given as a path does not exist (``tiny`` is built in)."""
    if frame is None or frame == "tiny":
        return
    if not os.path.isfile(frame):
        raise ValueError(f"forward.frame: no frame file {frame}")
