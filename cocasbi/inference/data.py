"""Training data of NPE: (θ, x) pairs from a merged campaign file or from arrays.

Rows that are not usable (a failed simulation, or any non-finite θ or x) are dropped and
counted in a :class:`DataReport`; too few good rows is an error. θ and x become float32 torch
tensors, as sbi trains in float32. The campaign's prior box travels with the data, so the sbi
prior is the box the design was drawn from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cocasbi.inference.box import ParameterBox
from cocasbi.io.campaign_store import load_campaign
from cocasbi.prior import BoxPrior


@dataclass(frozen=True)
class DataReport:
    """How many rows were read, kept and dropped, and why (status or ``nonfinite``)."""

    n_total: int
    n_good: int
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"n_total": self.n_total, "n_good": self.n_good, "dropped": dict(self.dropped)}

    def __str__(self) -> str:
        why = ", ".join(f"{n} {k}" for k, n in sorted(self.dropped.items())) or "none"
        return f"{self.n_good} of {self.n_total} rows usable (dropped: {why})"


@dataclass(frozen=True)
class TrainingData:
    """θ (n, d) and x (n, m) float32 torch tensors with their layout and prior box.

    ``index``: row of each kept pair in the source (campaign plan index), int64.
    """

    theta: object  # torch.Tensor
    x: object  # torch.Tensor
    parameters: tuple[str, ...]
    names: tuple[str, ...]
    k: np.ndarray | None
    prior: BoxPrior
    index: np.ndarray
    report: DataReport

    def __len__(self) -> int:
        return int(self.theta.shape[0])

    def subset(self, rows) -> TrainingData:
        """The pairs at positions ``rows`` (not plan indices) of this set."""
        rows = np.asarray(rows, dtype=np.int64)
        return TrainingData(self.theta[rows], self.x[rows], self.parameters, self.names, self.k,
                            self.prior, self.index[rows],
                            DataReport(len(rows), len(rows), {}))


def from_model(model, theta, x, **kwargs) -> TrainingData:
    """:func:`from_arrays` with the layout (parameters, names, prior, k) of a forward model
    (``model.parameters``, ``.names``, ``.prior``, ``.k``)."""
    return from_arrays(theta, x, parameters=model.parameters, names=model.names,
                       prior=model.prior, k=model.k, **kwargs)


def from_arrays(theta, x, *, parameters, names, prior: BoxPrior, k=None, status=None,
                index=None, min_rows: int = 2) -> TrainingData:
    """Training data from numpy arrays θ (n, d) and x (n, m).

    Rows whose ``status`` (optional, per row) is not ``"ok"`` or whose θ or x holds a
    non-finite value are dropped and counted. Raises ValueError on a shape mismatch, on θ
    outside the prior box, or when fewer than ``min_rows`` rows remain.
    """
    import torch

    theta = np.asarray(theta, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    parameters, names = tuple(parameters), tuple(names)
    if theta.ndim != 2 or theta.shape[1] != len(parameters):
        raise ValueError(f"θ has shape {theta.shape}, expected (n, {len(parameters)}) for "
                         f"{', '.join(parameters)}")
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] != theta.shape[0]:
        raise ValueError(f"x has shape {x.shape}, expected ({theta.shape[0]}, {len(names)})")
    if tuple(prior.names) != parameters:
        raise ValueError(f"prior parameters {prior.names} differ from θ's {parameters}")
    n = theta.shape[0]
    status = np.full(n, "ok") if status is None else np.asarray(status).astype(str)
    dropped: Counter = Counter(s for s in status if s != "ok")
    ok = status == "ok"
    finite = np.isfinite(theta).all(axis=1) & np.isfinite(x).all(axis=1)
    dropped["nonfinite"] += int((ok & ~finite).sum())
    good = ok & finite
    prior.check(theta[good])
    report = DataReport(n, int(good.sum()), {k: v for k, v in dropped.items() if v})
    if report.n_good < min_rows:
        raise ValueError(f"only {report.n_good} usable simulations, need at least {min_rows} "
                         f"({report})")
    index = np.arange(n) if index is None else np.asarray(index)
    return TrainingData(torch.as_tensor(theta[good], dtype=torch.float32),
                        torch.as_tensor(x[good], dtype=torch.float32), parameters, names,
                        None if k is None else np.asarray(k, dtype=np.float64), prior,
                        index[good].astype(np.int64), report)


def campaign_prior(parameters, lower, upper) -> BoxPrior:
    """The campaign's box: a cosmological :class:`BoxPrior`, else a :class:`ParameterBox`."""
    try:
        return BoxPrior(tuple(parameters), np.asarray(lower), np.asarray(upper))
    except ValueError:
        return ParameterBox(tuple(parameters), np.asarray(lower), np.asarray(upper))


def training_set(campaign_h5: str | Path, min_rows: int = 2) -> TrainingData:
    """The usable (θ, x) pairs of a merged ``campaign.h5`` with its prior box and layout."""
    import h5py

    data = load_campaign(campaign_h5)
    if data.x is None:
        raise ValueError(f"{campaign_h5} stores no summaries x (kind is not 'summaries')")
    with h5py.File(campaign_h5, "r") as f:
        lower, upper = f["lower"][...], f["upper"][...]
    return from_arrays(data.theta, data.x, parameters=data.parameters, names=data.names,
                       prior=campaign_prior(data.parameters, lower, upper), k=data.k,
                       status=data.status, min_rows=min_rows)
