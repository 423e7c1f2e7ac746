"""Certification configuration: the run under test, its reference, the design, the thresholds.

A YAML file with top-level keys ``under_test``, ``reference``, ``thresholds`` (and the other
sections below) is a certification configuration; ``tiny`` is built in
(``configs/certify/tiny.yaml``). Every section is frozen and rejects unknown keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cocasbi.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    read_yaml,
    resolve_config_path,
)
from cocasbi.prior import DEFAULT_PRIOR, BoxPrior


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class RunSpec(_Frozen):
    """One way of running the simulation config: method, steps, frame and force schedule."""

    method: Literal["pm", "cola", "coca"]
    n_steps: int | None = Field(None, ge=1, description="KDK steps (default: the config's)")
    pm_factors: Literal["standard", "fastpm"] | None = Field(
        None, description="kick/drift factors of plain PM (default: the config's)")
    frame: str | None = Field(None, description="COCA frame: a path, or 'tiny' (method coca)")
    forces: str = Field("all", description="force schedule: all, none, even:K, last:K, ...")
    label: str | None = Field(None, description="name in reports (default: METHOD-steps)")

    @model_validator(mode="after")
    def _frame_for_coca(self):
        if self.method == "coca" and self.frame is None:
            raise ValueError("method coca needs a frame")
        if self.method != "coca" and self.frame is not None:
            raise ValueError(f"a frame is only used by method coca, not {self.method}")
        if self.method != "coca" and self.forces != "all":
            raise ValueError(f"forces {self.forces!r} needs method coca (PM and COLA evaluate "
                             "every force)")
        return self

    def simulation_config(self, base: Config) -> Config:
        """``base`` with this run's method, steps and factors."""
        update = {"method": self.method}
        if self.n_steps is not None:
            update["n_steps"] = self.n_steps
        if self.pm_factors is not None:
            update["pm_factors"] = self.pm_factors
        return base.replace(simulation=update)

    def name(self, base: Config) -> str:
        if self.label:
            return self.label
        steps = self.n_steps or base.simulation.n_steps
        forces = "" if self.forces == "all" else f" ({self.forces})"
        return f"{self.method.upper()}-{steps}{forces}"


class DesignSpec(_Frozen):
    """Where in the prior the pairs run: its centre, its corners, interior Latin-hypercube
    points, each with ``n_seeds`` held-out seeds ``stream_seed(master_seed, CERTIFY, j)``."""

    corners: bool = True
    n_interior: int = Field(2, ge=0)
    n_seeds: int = Field(2, ge=1)
    master_seed: int = Field(0, ge=0)


class MetricsSpec(_Frozen):
    """Binning of the paired metrics [h/Mpc]."""

    dk: float | None = Field(None, gt=0, description="P(k) bin width (default k_f)")
    kmin: float | None = Field(None, ge=0, description="first P(k) edge (default k_f/2)")
    bk_bins: list[float] | None = Field(
        None, description="bispectrum bins (kmin, kmax, dk); default (k_f, k_max, 2 k_f)")
    velocities: bool = Field(True, description="compare peculiar velocities")

    @model_validator(mode="after")
    def _three_bins(self):
        if self.bk_bins is not None and len(self.bk_bins) != 3:
            raise ValueError("bk_bins must be [kmin, kmax, dk] in h/Mpc")
        return self


class Thresholds(_Frozen):
    """Pass/fail limits, checked for every k <= ``kmax`` and every θ and seed of the design."""

    kmax: float | None = Field(None, gt=0, description="[h/Mpc]; default half the particle "
                                                       "Nyquist wavenumber π N_p / (2L)")
    pk_ratio: float = Field(0.01, gt=0, description="max |P/P_ref − 1|")
    one_minus_r2: float = Field(0.01, gt=0, description="max 1 − r²")
    bk_ratio: float = Field(0.02, gt=0, description="max |B/B_ref − 1|")
    parameter_bias: float = Field(0.1, gt=0, description="max |δθ| in posterior σ")
    posterior_shift: float = Field(0.1, gt=0, description="max |NPE posterior mean shift| "
                                                          "in posterior σ")
    misspecification_alpha: float = Field(
        0.05, gt=0, lt=1, description="min p-value of the MMD test of the reference summaries "
                                      "against the NPE training set")


class ConvergenceSpec(_Frozen):
    """The metrics at the fiducial θ as the force evaluations grow must fall toward zero.

    ``levels`` are step counts (PM, COLA) or force counts with schedule ``even:K`` (COCA);
    default: ½, 1, 2 and 4 times the run under test (COCA: ½, 1, 2 times its forces and all).
    """

    enabled: bool = True
    levels: list[int] | None = None
    tolerance: float = Field(0.2, ge=0, description="allowed relative rise between levels")

    @model_validator(mode="after")
    def _increasing(self):
        if self.levels is not None and (len(self.levels) < 2 or any(
                b <= a for a, b in zip(self.levels, self.levels[1:], strict=False))
                or self.levels[0] < 0):
            raise ValueError("convergence levels must be >= 2 increasing counts >= 0")
        return self


class FisherSpec(_Frozen):
    """Fisher estimate of the parameter bias δθ = F⁻¹ Jᵀ C⁻¹ ⟨Δx⟩ of the run under test.

    J by central differences (steps ``step`` × prior width) at ``n_derivative`` common seeds,
    C from ``n_covariance`` seeds at the fiducial θ, both from runs of the configuration under
    test; ⟨Δx⟩ from the pairs at the fiducial θ.
    """

    enabled: bool = True
    summaries: list[str] = Field(default_factory=lambda: ["log_pk"])
    n_covariance: int = Field(40, ge=3)
    n_derivative: int = Field(4, ge=1)
    step: float = Field(0.05, gt=0, le=0.5)


class NpeSpec(_Frozen):
    """Parameter-level check (off by default): NPE trained on ``n_train`` runs of the
    configuration under test, evaluated on each pair's reference and run summaries
    (:mod:`cocasbi.certify.npe`). ``estimator`` and ``training`` are
    :class:`cocasbi.inference.config.EstimatorConfig` / ``TrainingConfig`` fields."""

    enabled: bool = False
    n_train: int = Field(300, ge=20)
    n_samples: int = Field(1000, ge=10, description="posterior samples per observation")
    n_shuffle: int = Field(1000, ge=20, description="shuffles of the MMD misspecification "
                                                   "test's null distribution")
    estimator: dict = Field(default_factory=dict)
    training: dict = Field(default_factory=dict)


class FarmSpec(_Frozen):
    """Run the pairs as a campaign on a Dask farm (resume, failure records) instead of in
    process."""

    enabled: bool = False
    workers: int = Field(0, ge=0, description="local worker processes; 0 = automatic")
    threads_per_worker: int = Field(0, ge=0, description="0 = automatic")
    directory: str | None = Field(None, description="campaign directory (default "
                                                    "<output>/pairs)")


class OutputSpec(_Frozen):
    directory: str = "output/certify"


class CertifyConfig(_Frozen):
    """A certification: configuration under test against a reference on the same mesh."""

    name: str = "certify"
    simulation: str | dict = Field("tiny", description="simulation config: name, path, mapping")
    under_test: RunSpec
    reference: RunSpec = RunSpec(method="pm", n_steps=100, pm_factors="fastpm")
    prior: dict[str, list[float]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_PRIOR.to_dict().items()})
    design: DesignSpec = DesignSpec()
    metrics: MetricsSpec = MetricsSpec()
    thresholds: Thresholds = Thresholds()
    convergence: ConvergenceSpec = ConvergenceSpec()
    fisher: FisherSpec = FisherSpec()
    npe: NpeSpec = NpeSpec()
    threads: int = Field(0, ge=0, description="FFT/numba threads per simulation; 0 = all")
    farm: FarmSpec = FarmSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _consistent(self):
        if self.reference.method == "coca":
            raise ValueError("the reference must be a PM or COLA run, not COCA")
        self.prior_box()  # raises ValueError for a bad prior
        return self

    def simulation_config(self) -> Config:
        """The base simulation :class:`~cocasbi.config.Config` (threads applied)."""
        if isinstance(self.simulation, dict):
            cfg = config_from_dict(self.simulation, source="certify.simulation")
        else:
            cfg = load_config(self.simulation)
        return cfg.replace(simulation={"threads": self.threads})

    def prior_box(self) -> BoxPrior:
        return BoxPrior.from_dict({k: tuple(v) for k, v in self.prior.items()})

    def kmax(self, cfg: Config) -> float:
        """Threshold k_max [h/Mpc]."""
        sim = cfg.simulation
        return self.thresholds.kmax or 0.5 * np.pi * sim.n_particles / sim.box_size


def certify_config_from_dict(data: dict, source: str = "<dict>") -> CertifyConfig:
    """Validate a mapping; ConfigError naming the field and the source on failure."""
    try:
        return CertifyConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_certify_config(path: str | Path = "tiny") -> CertifyConfig:
    """Load a certification YAML file or a built-in one (``tiny``)."""
    path = resolve_config_path(path, "certification configuration", kind="certify")
    return certify_config_from_dict(read_yaml(path), source=str(path))
