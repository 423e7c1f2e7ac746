"""A transfer frame with one nonlinear input: the PM force at the 2LPT positions at a = 0.5.

Fitted exactly from the per-run moments of ``frame_force_features.py`` (5 force times cached
in TRAIN/moments_force_0.2_0.35_0.5_0.75_1.0; this frame uses Ψ1, Ψ2 and F(a = 0.5)),
drift-weighted basis ρ = 0.01, K = 4, cosmology degree 1. Binding it to a run costs one PM
force evaluation (at 2N mesh) more than the plain transfer frame.

    python experiments/frame_force_frame.py TRAIN N_TRAIN FRAME_OUT.npz
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from cocasbi.frame.emulator import FrameEmulator
from cocasbi.frame.training.basis import drift_metric, weighted_basis
from cocasbi.frame.training.moments import SimMoments, fit_per_time, project_model
from cocasbi.frame.transfer import CosmologyFeatures

CACHE = "moments_force_0.2_0.35_0.5_0.75_1.0"
SOURCES, FORCE_TIMES = (0, 1, 4), (0.5,)
RIDGE, K, DEGREE = 0.01, 4, 1


def main(train_dir, n_train, out):
    paths = sorted((Path(train_dir) / CACHE).glob("sim_*.npz"))[: int(n_train)]
    idx = list(SOURCES)
    train = [SimMoments.load(p) for p in paths]
    train = [replace(m, cross=m.cross[np.ix_(idx, idx)], vec=m.vec[:, idx]) for m in train]
    metric = drift_metric(np.mean([m.drift for m in train], axis=0), RIDGE)
    basis = weighted_basis(sum(m.gram for m in train), train[0].times, metric).truncated(K)
    f = CosmologyFeatures(degree=DEGREE)
    model = project_model(fit_per_time(train, f), basis, f, train[0].box_size, len(train),
                          FORCE_TIMES)
    meta = {"config": "paper", "prior": "DEFAULT_PRIOR", "n_train_sims": len(train), "K": K,
            "basis": "drift-weighted", "ridge": RIDGE, "degree": DEGREE,
            "force_times": list(FORCE_TIMES), "made_by": "experiments/frame_force_frame.py"}
    FrameEmulator("transfer", basis, model, meta).save(out)
    print("saved", out, len(train), "runs")


if __name__ == "__main__":
    main(*sys.argv[1:4])
