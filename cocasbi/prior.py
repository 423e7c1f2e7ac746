"""The one prior: a uniform box over cosmological parameters, and the designs drawn from it.

A :class:`BoxPrior` names the varied parameters (from :data:`cocasbi.cosmology.PARAMETERS`, in
the order of θ) and their bounds. Campaigns draw their θ from it (:meth:`BoxPrior.design`),
certification spreads its design over it (corners included), frame training data cover it, and
inference turns it into ``sbi``'s ``BoxUniform`` (:meth:`BoxPrior.to_sbi`). Every draw takes a
numpy Generator made from the seed tree (:mod:`cocasbi.seeds`). θ is float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cocasbi.cosmology import PARAMETERS, check_parameter

Design = Literal["latin_hypercube", "uniform"]
DESIGNS: tuple[str, ...] = ("latin_hypercube", "uniform")


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) points in [0, 1)^d with exactly one point in each of n slices of every axis."""
    strata = np.stack([rng.permutation(n) for _ in range(d)], axis=1)
    return (strata + rng.random((n, d))) / n


@dataclass(frozen=True)
class BoxPrior:
    """Uniform prior on the box ``low <= θ <= high`` over ``names`` (float64 bounds)."""

    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray

    def __post_init__(self):
        names = tuple(self.names)
        low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if not names:
            raise ValueError("a prior needs at least one parameter")
        if len(set(names)) != len(names):
            raise ValueError(f"repeated parameter in prior {names}")
        if low.shape != (len(names),) or high.shape != (len(names),):
            raise ValueError(f"prior bounds must have {len(names)} entries each")
        for name, lo, hi in zip(names, low, high, strict=True):
            try:
                check_parameter(name, lo)
                check_parameter(name, hi)
            except ValueError as err:
                raise ValueError(f"prior {name}: {err}") from None
            if not lo < hi:
                raise ValueError(f"prior {name}: low={lo} must be below high={hi}")
        low.flags.writeable = high.flags.writeable = False
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_dict(cls, bounds: Mapping[str, Sequence[float]],
                  names: Sequence[str] | None = None) -> BoxPrior:
        """From ``{"Omega_m": (0.2, 0.4), ...}``; ``names`` fixes the order of θ (default: the
        order of :data:`~cocasbi.cosmology.PARAMETERS`)."""
        if names is None:
            unknown = sorted(set(bounds) - set(PARAMETERS))
            if unknown:
                raise ValueError(f"unknown parameter(s) {unknown}; choose from {PARAMETERS}")
            names = [p for p in PARAMETERS if p in bounds]
        elif set(names) != set(bounds):
            raise ValueError(f"prior names {sorted(bounds)} must be the parameters {list(names)}")
        for name in names:
            if len(bounds[name]) != 2:
                raise ValueError(f"prior {name}: give (low, high), not {bounds[name]!r}")
        return cls(tuple(names), np.array([bounds[p][0] for p in names], dtype=np.float64),
                   np.array([bounds[p][1] for p in names], dtype=np.float64))

    def to_dict(self) -> dict[str, tuple[float, float]]:
        return {p: (float(lo), float(hi)) for p, lo, hi in
                zip(self.names, self.low, self.high, strict=True)}

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.low + self.high)

    def contains(self, theta) -> np.ndarray:
        """Boolean (n,) (or scalar for one θ): θ inside the closed box, all entries finite."""
        theta = np.asarray(theta, dtype=np.float64)
        inside = np.isfinite(theta) & (theta >= self.low) & (theta <= self.high)
        return inside.all(axis=-1)

    def check(self, theta) -> np.ndarray:
        """θ as float64 (n, d) or (d,); ValueError naming the first entry outside the box."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape[-1:] != (self.dim,):
            raise ValueError(f"θ has shape {theta.shape}, expected (..., {self.dim}) "
                             f"({', '.join(self.names)})")
        bad = ~(np.isfinite(theta) & (theta >= self.low) & (theta <= self.high))
        if bad.any():
            idx = np.argwhere(bad)[0]
            name = self.names[idx[-1]]
            raise ValueError(f"θ {name}={theta[tuple(idx)]} outside the prior "
                             f"[{self.low[idx[-1]]:g}, {self.high[idx[-1]]:g}]")
        return theta

    def from_unit(self, unit) -> np.ndarray:
        """Map points of [0, 1]^d to the box."""
        return self.low + self.width * np.asarray(unit, dtype=np.float64)

    def to_unit(self, theta) -> np.ndarray:
        return (np.asarray(theta, dtype=np.float64) - self.low) / self.width

    def design(self, n: int, rng: np.random.Generator, kind: Design = "latin_hypercube"):
        """(n, d) θ drawn with ``rng``: a Latin hypercube or independent uniform draws."""
        if kind == "latin_hypercube":
            unit = latin_hypercube(n, self.dim, rng)
        elif kind == "uniform":
            unit = rng.random((n, self.dim))
        else:
            raise ValueError(f"unknown design {kind!r}; choose from {DESIGNS}")
        return self.from_unit(unit)

    def corners(self) -> np.ndarray:
        """(2^d, d) corners of the box."""
        return np.array([self.from_unit(c) for c in itertools.product((0.0, 1.0),
                                                                       repeat=self.dim)])

    def to_sbi(self, device: str = "cpu"):
        """``sbi.utils.BoxUniform`` on the same box (float32 tensors, as sbi uses)."""
        import torch
        from sbi.utils import BoxUniform

        return BoxUniform(low=torch.tensor(self.low, dtype=torch.float32),
                          high=torch.tensor(self.high, dtype=torch.float32), device=device)


#: The project's default prior (campaigns, frame training data, inference).
DEFAULT_PRIOR = BoxPrior.from_dict({"Omega_m": (0.2, 0.4), "sigma8": (0.65, 0.95)})
