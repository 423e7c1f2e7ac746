"""Validated, frozen configuration models loaded from YAML.

Every numerical choice of a run lives in one :class:`Config`. Unknown keys are rejected and
every error names the offending field, before any expensive work starts: values must be finite
numbers of the right type (``n_steps: true`` is not 1), cosmological parameters lie in
:data:`cocasbi.cosmology.PARAMETER_RANGES`, a YAML mapping may not repeat a key, and a run whose
particles and mesh would not fit in memory is refused before anything is allocated.

Built-in configurations ship with the package, one folder per kind
(``configs/simulation``, ``configs/campaign``, ``configs/inference``, ``configs/certify``), and
are named without folder or suffix: ``load_config("tiny")`` is ``configs/simulation/tiny.yaml``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cocasbi.cosmology import check_parameter

#: Configuration kinds, each a folder of built-in YAML files under ``configs/``.
KINDS = ("simulation", "campaign", "inference", "certify")

#: Top-level keys that identify a file of another kind than ``simulation``, checked in this
#: order (an inference file names a campaign, a certification file has NPE settings).
_KIND_MARKERS = {"certify": {"under_test", "reference", "thresholds", "convergence", "fisher"},
                 "inference": {"estimator", "training", "gaussian_field", "n_test",
                               "sequential", "credibility"},
                 "campaign": {"n_simulations", "forward", "execution"}}


class _Frozen(BaseModel):
    """Frozen, unknown keys rejected, no silent coercion (``true`` is not 1, "3" is not 3),
    non-finite floats rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class CosmologyConfig(_Frozen):
    """Flat ΛCDM parameters (radiation neglected)."""

    Omega_m: float = Field(0.31, gt=0.0, le=1.0, description="total matter density today")
    Omega_b: float = Field(0.049, gt=0.0, description="baryon density today")
    h: float = Field(0.677, gt=0.0, le=2.0, description="H0 / (100 km/s/Mpc)")
    n_s: float = Field(0.9665, gt=0.0, le=2.0, description="primordial spectral index")
    sigma8: float = Field(0.81, gt=0.0, description="rms linear density in 8 Mpc/h spheres at a=1")
    transfer: Literal["eisenstein_hu", "eisenstein_hu_nowiggle", "camb", "class"] = Field(
        "eisenstein_hu", description="linear transfer function back-end"
    )

    @field_validator("Omega_m", "Omega_b", "h", "n_s", "sigma8", mode="before")
    @classmethod
    def _in_range(cls, v, info):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"must be a number, not {v!r}")
        return check_parameter(info.field_name, v)

    @model_validator(mode="after")
    def _baryons_below_matter(self):
        if self.Omega_b >= self.Omega_m:
            raise ValueError(f"Omega_b={self.Omega_b} must be smaller than Omega_m={self.Omega_m}")
        return self


class SimulationConfig(_Frozen):
    """Box, resolution, time stepping and method of one N-body run."""

    box_size: float = Field(128.0, gt=0.0, description="comoving box side [Mpc/h]")
    n_particles: int = Field(64, ge=2, description="particles per side (N_p)")
    n_mesh: int = Field(128, ge=2, description="PM mesh cells per side (N_m = B N_p)")
    a_init: float = Field(0.05, gt=0.0, description="scale factor of the initial conditions")
    a_final: float = Field(1.0, gt=0.0, description="final scale factor")
    n_steps: int = Field(20, ge=1, description="number of KDK steps")
    schedule: Literal["linear", "log"] | list[float] = Field(
        "linear", description="time-step boundaries: linear or log in a, or an explicit list"
    )
    method: Literal["pm", "cola", "coca"] = "cola"
    pm_factors: Literal["standard", "fastpm"] = Field(
        "fastpm", description="kick/drift factors of plain PM (COLA always uses standard ones)"
    )
    kernel: Literal["fd", "exact"] = Field(
        "fd", description="force kernel: finite difference (default) or exact (-1/k^2, ik)"
    )
    lpt_order: Literal[1, 2] = 2
    final_kick: bool = Field(True, description="evaluate the force at a_final (final momenta)")
    kicks: Literal["fine", "interval"] = Field(
        "fine", description="with skipped forces (COCA), a computed force kicks over its two fine "
        "half steps (fine) or over the whole interval it stands for (interval)"
    )
    snapshots: list[float] = Field(default_factory=list, description="extra output a values")
    seed: int = Field(42, ge=0)
    fixed_amplitude: bool = False
    paired: bool = False
    threads: int = Field(0, ge=0, description="FFT/numba threads; 0 = all cores")

    @field_validator("schedule")
    @classmethod
    def _increasing_list(cls, v):
        if isinstance(v, list) and any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("explicit schedule must be strictly increasing in a")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.n_mesh % self.n_particles:
            raise ValueError(
                f"n_mesh={self.n_mesh} is not a multiple of n_particles={self.n_particles}"
            )
        if self.kernel == "exact" and self.n_mesh != 3 * self.n_particles:
            raise ValueError(
                "kernel 'exact' is validated only with n_mesh = 3 n_particles: at B = 2 it "
                "grows large scales 4-10 % too fast (docs/physics.md); use kernel 'fd'"
            )
        if self.a_final <= self.a_init:
            raise ValueError(f"a_final={self.a_final} must exceed a_init={self.a_init}")
        if isinstance(self.schedule, list):
            if len(self.schedule) < 2:
                raise ValueError("explicit schedule needs at least two boundaries")
            if abs(self.schedule[0] - self.a_init) > 1e-12 or abs(
                self.schedule[-1] - self.a_final
            ) > 1e-12:
                raise ValueError("explicit schedule must start at a_init and end at a_final")
        for a in self.snapshots:
            if not self.a_init < a <= self.a_final:
                raise ValueError(f"snapshot a={a} outside (a_init, a_final]")
        return self


class PowerConfig(_Frozen):
    """Power-spectrum binning: linear bins of width dk_factor * k_f up to kmax_factor * k_Nyq."""

    dk_factor: float = Field(1.0, gt=0.0, description="bin width in units of k_f")
    kmax_factor: float = Field(1.0, gt=0.0, le=1.8, description="kmax in units of particle k_Nyq")


class OutputConfig(_Frozen):
    directory: Path = Field(Path("output"), strict=False, description="output folder")
    snapshot: bool = True
    plot: bool = True


class Config(_Frozen):
    name: str = "run"
    cosmology: CosmologyConfig = CosmologyConfig()
    simulation: SimulationConfig = SimulationConfig()
    power: PowerConfig = PowerConfig()
    output: OutputConfig = OutputConfig()

    def power_binning(self) -> tuple[float, float, float]:
        """Default P(k) bins (dk, kmin, kmax) [h/Mpc]: dk = dk_factor k_f, kmin = k_f / 2,
        kmax = kmax_factor × the particle Nyquist wavenumber π N_p / L."""
        sim = self.simulation
        kf = 2 * np.pi / sim.box_size
        return (self.power.dk_factor * kf, 0.5 * kf,
                self.power.kmax_factor * np.pi * sim.n_particles / sim.box_size)

    def replace(self, **sections) -> Config:
        """A copy with some sections or fields updated, re-validated.

        ``cfg.replace(simulation={"n_steps": 40})`` merges into the section.
        """
        data = self.model_dump()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return config_from_dict(data, source=f"{self.name}.replace()")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the field."""


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_validation(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML safe loader that refuses a mapping which repeats a key (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: let PyYAML report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML file (empty file: ``{}``); ConfigError naming the file
    for unreadable bytes, invalid YAML, a repeated key or a top level that is not a mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (UTF-8) YAML file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a YAML file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, not {type(data).__name__}")
    return data


def config_kind(data: dict) -> str:
    """The kind of configuration a top-level mapping looks like (``simulation`` by default)."""
    for kind, markers in _KIND_MARKERS.items():
        if markers & set(data):
            return kind
    return "simulation"


def builtin_config_path(name: str, kind: str = "simulation") -> Path:
    """Path of a configuration of ``kind`` shipped with the package (``tiny``, ``paper``, ...).

    A name that exists only under another kind is an error that says which kind it is."""
    if kind not in KINDS:
        raise ValueError(f"unknown configuration kind {kind!r}; choose from {KINDS}")
    root = resources.files("cocasbi") / "configs"
    path = Path(str(root / kind / f"{name}.yaml"))
    if path.is_file():
        return path
    others = [k for k in KINDS if k != kind and (root / k / f"{name}.yaml").is_file()]
    if others:
        raise ConfigError(f"{name!r} is a built-in {others[0]} configuration, not a {kind} "
                          f"one: use it with `cocasbi {_COMMAND[others[0]]}`")
    names = sorted(p.name[:-5] for p in (root / kind).iterdir() if p.name.endswith(".yaml"))
    raise ConfigError(f"no built-in {kind} configuration named {name!r} "
                      f"(built-in: {', '.join(names)})")


_COMMAND = {"simulation": "simulate", "campaign": "campaign run", "inference": "infer pipeline",
            "certify": "certify"}


def resolve_config_path(path: str | Path, what: str = "configuration",
                        kind: str = "simulation") -> Path:
    """An existing YAML file: ``path`` itself, or the built-in config of that name and kind."""
    path = Path(path)
    if not path.suffix and not path.exists():
        path = builtin_config_path(str(path), kind)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    return path


def load_config(path: str | Path) -> Config:
    """Load a YAML file (or the name of a built-in config) into a validated :class:`Config`."""
    path = resolve_config_path(path)
    data = read_yaml(path)
    kind = config_kind(data)
    if kind != "simulation":
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConfigError(f"{path} is {article} {kind} configuration, not a simulation one: use it "
                          f"with `cocasbi {_COMMAND[kind]}`")
    return config_from_dict(data, source=str(path))
