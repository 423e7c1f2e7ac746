"""Convergence certificate: errors must fall toward zero as force evaluations are added.

A method that converges to the reference shows paired errors that shrink as its steps (PM,
COLA) or forces (COCA, schedule ``even:K``) grow. :func:`is_converging` flags a sequence whose
most expensive level is not its best or has not halved the error of the cheapest, unless it is
already under a floor (where round-off and reference error dominate).
"""

from __future__ import annotations

import numpy as np

#: Metrics followed along the ladder.
LADDER_METRICS = ("rms_dx", "pk_ratio", "one_minus_r2")


def is_converging(values, tolerance: float = 0.2, floor: float = 0.0) -> bool:
    """True if ``values`` (error per level, increasing cost) fall toward zero.

    The last (most expensive) level must be at most half the first and, within a factor
    1 + ``tolerance``, the smallest of all levels; a bump in between is allowed (a few forces
    may place a wrong frame's error unluckily). A last value at or below ``floor`` always
    passes.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or not np.all(np.isfinite(v)):
        return False
    if v[-1] <= floor:
        return True
    return bool(v[-1] < 0.5 * v[0] and v[-1] <= np.min(v[:-1]) * (1 + tolerance))


def default_levels(method: str, n_steps: int, n_forces: int, max_forces: int) -> list[int]:
    """Steps (PM, COLA: ½, 1, 2, 4 × n_steps) or forces (COCA: ½, 1, 2 × n_forces and all
    ``max_forces``)."""
    if method == "coca":
        return sorted({n_forces // 2, n_forces, min(2 * n_forces, max_forces), max_forces})
    return sorted({max(n_steps // 2, 1), n_steps, 2 * n_steps, 4 * n_steps})


def worst(metrics: dict, kmax: float) -> dict[str, float]:
    """Scalar summaries of one pair's metrics: rms_dx [Mpc/h] and the worst |P ratio − 1|,
    1 − r² over k <= kmax."""
    sel = (metrics["k"] <= kmax) & (metrics["n_modes"] > 0)
    return {"rms_dx": float(metrics["rms_dx"]),
            "pk_ratio": float(np.max(np.abs(metrics["pk_ratio"][sel]))),
            "one_minus_r2": float(np.max(metrics["one_minus_r2"][sel]))}


#: Ladder metrics with a field-level threshold (:class:`~cocasbi.certify.config.Thresholds`).
THRESHOLD_METRICS = ("pk_ratio", "one_minus_r2")


def forces_to_pass(ladder: dict, thresholds: dict[str, float]) -> dict:
    """The cheapest ladder level at which every field-level threshold passes.

    Parameters
    ----------
    ladder : dict
        ``levels`` and ``n_forces`` (one per level, increasing cost) and, per metric of
        ``thresholds``, the worst value over k <= k_max at each level (as :func:`worst` gives).
    thresholds : dict
        Metric name -> limit; a level passes when every ``|value| < limit``.

    Returns
    -------
    dict
        ``passes`` (bool per level), ``level`` and ``n_forces`` of the first passing level
        (None when none within the ladder passes), and ``stable``: whether every more
        expensive level passes too.
    """
    if not thresholds:
        raise ValueError("forces_to_pass needs at least one threshold")
    missing = [name for name in ("levels", "n_forces", *thresholds) if name not in ladder]
    if missing:
        raise ValueError(f"ladder lacks {', '.join(missing)}")
    n = len(ladder["levels"])
    passes = np.ones(n, dtype=bool)
    for name, limit in thresholds.items():
        values = np.abs(np.asarray(ladder[name], dtype=np.float64))
        if values.shape != (n,):
            raise ValueError(f"ladder {name} has {values.size} values for {n} levels")
        passes &= np.isfinite(values) & (values < limit)
    first = int(np.argmax(passes)) if passes.any() else None
    return {"passes": passes.tolist(),
            "level": None if first is None else int(ladder["levels"][first]),
            "n_forces": None if first is None else int(ladder["n_forces"][first]),
            "stable": bool(first is not None and passes[first:].all()),
            "thresholds": {k: float(v) for k, v in thresholds.items()}}
