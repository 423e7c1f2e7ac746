"""Configuration of neural posterior estimation: estimator, training, diagnostics, pipeline.

Every section is a frozen pydantic model that refuses unknown keys, so a typo in a YAML file is
an error, not a silently ignored option. :func:`load_inference_config` reads a pipeline YAML
file or a built-in one by name (``tiny`` is ``configs/inference/tiny.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cocasbi.config import ConfigError

#: Density estimators we build (sbi's ``posterior_nn`` model names).
ESTIMATORS = ("nsf", "maf", "mdn")
#: Embedding networks we build for x.
EMBEDDINGS = ("mlp", "none")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EstimatorConfig(_Frozen):
    """The conditional density estimator q(θ | x) and the embedding of x."""

    model: Literal["nsf", "maf", "mdn"] = "nsf"
    hidden_features: int = Field(50, ge=1)
    num_transforms: int = Field(5, ge=1, description="flow layers (nsf, maf)")
    num_bins: int = Field(10, ge=2, description="spline bins (nsf)")
    num_components: int = Field(10, ge=1, description="mixture components (mdn)")
    embedding: Literal["mlp", "none"] = "mlp"
    embedding_features: int = Field(16, ge=1, description="output size of the MLP embedding")
    embedding_hidden: int = Field(64, ge=1)
    embedding_layers: int = Field(2, ge=1)
    z_score: bool = Field(True, description="z-score θ and x (statistics of the training split)")


class TrainingConfig(_Frozen):
    """Training of each estimator (sbi's NPE trainer) and the ensemble / rounds around it."""

    batch_size: int = Field(100, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    stop_after_epochs: int = Field(20, ge=1, description="early-stopping patience [epochs]")
    max_epochs: int = Field(500, ge=1)
    clip_max_norm: float | None = Field(5.0, gt=0)
    ensemble: int = Field(1, ge=1, description="independently initialised estimators")
    min_simulations: int = Field(20, ge=2, description="fewer good rows is an error")
    threads: int = Field(1, ge=0, description="torch threads while training; 0 = torch's")


class SequentialConfig(_Frozen):
    """Optional sequential rounds: simulate at draws of the current posterior given x_o."""

    rounds: int = Field(1, ge=1, description="1 = amortised NPE, no sequential rounds")
    simulations_per_round: int = Field(100, ge=1)


class DiagnosticsConfig(_Frozen):
    """Calibration checks on held-out simulations and their pass thresholds."""

    n_posterior_samples: int = Field(500, ge=10, description="per held-out simulation")
    sbc_min_p: float = Field(0.01, ge=0, le=1, description="smallest KS p-value of SBC ranks")
    tarp_max_atc: float = Field(0.1, ge=0, description="largest |area to curve| of TARP")
    coverage_max_deviation: float = Field(
        0.15, ge=0, le=1, description="largest |expected coverage − credibility| per parameter")


class GaussianFieldSpec(_Frozen):
    """The known-answer Gaussian-field model as the simulator (simulated in process)."""

    n: int = Field(8, ge=2, description="grid cells per side (even)")
    box_size: float = Field(256.0, gt=0, description="[Mpc/h]")
    n_bins: int = Field(4, ge=1)
    prior: tuple[float, float] = Field((0.5, 2.0), description="uniform box of A")
    n_simulations: int = Field(1000, ge=1)

    def model(self, method: str = "exact"):
        from cocasbi.inference.gaussian_field import GaussianFieldModel

        return GaussianFieldModel(n=self.n, box_size=self.box_size, n_bins=self.n_bins,
                                  method=method, prior=self.prior)


class ObservationConfig(_Frozen):
    """The mock observation: a reference run at ``theta`` with a held-out seed."""

    theta: dict[str, float] = Field(..., description="true parameters of the mock")
    index: int = Field(0, ge=0, description="held-out observation seed index j")
    method: Literal["pm", "cola", "field", "exact"] = Field(
        "pm", description="reference run: pm / cola (campaign), field / exact (Gaussian field)")
    n_steps: int | None = Field(None, ge=1, description="steps of the reference run")
    file: Path | None = Field(None, description="read x_o from this HDF5 file instead")


class PipelineConfig(_Frozen):
    """The whole job: campaign → NPE → mock observation → posterior → diagnostics → report."""

    name: str = "inference"
    directory: Path = Path("output/inference")
    master_seed: int = Field(..., ge=0)
    campaign: str | dict | None = Field(None, description="campaign YAML (relative to this "
                                        "file), built-in name, or inline mapping")
    gaussian_field: GaussianFieldSpec | None = Field(
        None, description="simulate the known-answer model instead of a campaign")
    n_test: int = Field(100, ge=0, description="last rows of the campaign held out for "
                        "diagnostics (never trained on)")
    n_samples: int = Field(10000, ge=10, description="posterior samples of the observation")
    credibility: tuple[float, ...] = (0.68, 0.95)
    estimator: EstimatorConfig = EstimatorConfig()
    training: TrainingConfig = TrainingConfig()
    sequential: SequentialConfig = SequentialConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    observation: ObservationConfig

    @model_validator(mode="after")
    def _check(self):
        if (self.campaign is None) == (self.gaussian_field is None):
            raise ValueError("give exactly one of `campaign` and `gaussian_field`")
        field_methods = ("field", "exact")
        if (self.gaussian_field is not None) != (self.observation.method in field_methods):
            raise ValueError(f"observation method {self.observation.method!r} does not fit "
                             f"the {'Gaussian-field' if self.gaussian_field else 'campaign'} "
                             "simulator")
        for c in self.credibility:
            if not 0 < c < 1:
                raise ValueError(f"credibility level {c} must be in (0, 1)")
        return self


def load_inference_config(path: str | Path) -> PipelineConfig:
    """Load a pipeline YAML file, or a built-in one by name (``tiny``).

    A relative ``campaign`` path with a suffix is taken relative to the YAML file.
    """
    path = resolve_inference_config(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        campaign = data.get("campaign")
        if isinstance(campaign, str) and Path(campaign).suffix and \
                not Path(campaign).is_absolute():
            data["campaign"] = str(path.parent / campaign)
        return PipelineConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError, AttributeError) as err:
        raise ConfigError(f"invalid inference configuration {path}:\n{err}") from None


def builtin_directory() -> Path:
    """``configs/inference`` shipped with the package."""
    return Path(__file__).resolve().parent.parent / "configs" / "inference"


def resolve_inference_config(path: str | Path) -> Path:
    """A YAML path, or the built-in config of that name (``tiny`` → ``tiny.yaml``)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    builtin = builtin_directory() / f"{candidate.name.removesuffix('.yaml')}.yaml"
    if not candidate.suffix and builtin.is_file():
        return builtin
    raise ConfigError(f"inference configuration {path} not found (built-in: "
                      f"{sorted(p.stem for p in builtin_directory().glob('*.yaml'))})")
