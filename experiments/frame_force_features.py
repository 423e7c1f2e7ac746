"""Is the transfer frame limited by its inputs? Add PM forces at the LPT positions as inputs.

The transfer frame is linear in Ψ1 and Ψ2, so it can only hold the part of the COLA residual
that is linear in the LPT fields; its training and held-out errors agree and do not fall with
more data (``frame_basis_study.py``), i.e. its capacity limits it. A cheap nonlinear input is
the PM force at the 2LPT positions, F(q + D1(a)Ψ1 + D2(a)Ψ2) (one force evaluation each, read
back on the Lagrangian lattice): it carries the nonlinear density that the COLA residual
responds to. Each input gets its own isotropic transfer functions (degree-1 cosmology
polynomial), fitted exactly from the per-run moments (:mod:`cocasbi.frame.training.moments`).
Time basis: drift-weighted, ridge 0.01, K = 4 (the choice of ``frame_basis_study.py``).

    python experiments/frame_force_features.py TRAIN TEST N_TRAIN RESULTS.json [A1,A2,...]

(the optional last argument replaces the times of the force inputs, default 0.5,1.0; every
contiguous run of them is tried)
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from cocasbi.frame.training.basis import drift_metric, relative_errors, weighted_basis
from cocasbi.frame.training.data import list_samples, read_sample
from cocasbi.frame.training.moments import (
    SimMoments,
    fit_per_time,
    model_error_gram,
    sample_moments,
)
from cocasbi.frame.transfer import CosmologyFeatures, lpt_forces

A_FORCE = (0.5, 1.0)  # times of the LPT positions whose PM force is an input
N_MESH = 128
RIDGE, K = 0.01, 4


def force_inputs(path, a_force) -> list[np.ndarray]:
    s = read_sample(path, residual=False)
    return lpt_forces(s.psi1, s.psi2, s.box_size, s.cosmology, a_force, N_MESH // s.n)


def moments(paths, cache: Path, a_force) -> list[SimMoments]:
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        f = cache / f"{p.stem}.npz"
        if not f.exists():
            sample_moments(p, extra=force_inputs(p, a_force)).save(f)
        out.append(SimMoments.load(f))
    return out


def sources(m: SimMoments, idx) -> SimMoments:
    idx = list(idx)
    return replace(m, cross=m.cross[np.ix_(idx, idx)], vec=m.vec[:, idx])


def main(train_dir, test_dir, n_train, out_json, a_force=None):
    a_force = tuple(float(a) for a in a_force.split(",")) if a_force else A_FORCE
    tag = "moments_force" + ("" if a_force == A_FORCE else "_" + "_".join(map(str, a_force)))
    train = moments(list_samples(train_dir)[: int(n_train)], Path(train_dir) / tag, a_force)
    test = moments(list_samples(test_dir), Path(test_dir) / tag, a_force)
    metric = drift_metric(np.mean([m.drift for m in train], axis=0), RIDGE)
    basis = weighted_basis(sum(m.gram for m in train), train[0].times, metric).truncated(K)
    feats = CosmologyFeatures(degree=1)
    n_f = len(a_force)
    sets = {"psi1+psi2": (0, 1)}
    for r in range(1, n_f + 1):  # every contiguous run of force times
        for first in range(n_f - r + 1):
            idx = tuple(range(first, first + r))
            name = "+" + "+".join(f"F(a={a_force[i]:g})" for i in idx)
            sets[name] = (0, 1, *(2 + i for i in idx))
    res = {"n_train": len(train), "a_force": a_force, "ridge": RIDGE, "K": K, "inputs": {}}
    for name, idx in sets.items():
        tr = [sources(m, idx) for m in train]
        te = [sources(m, idx) for m in test]
        tau = fit_per_time(tr, feats)
        row = {}
        for tag, group in (("test", te), ("train", tr)):
            errs = [relative_errors(model_error_gram(m, tau, feats, basis), m.gram, m.drift)
                    for m in group]
            row[tag] = {k: float(np.sqrt(np.mean([e[k] ** 2 for e in errs]))) for k in errs[0]}
        res["inputs"][name] = row
        print(name, json.dumps(row), flush=True)
    Path(out_json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:6])
