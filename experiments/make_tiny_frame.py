"""Make the pre-trained frame shipped for ``tiny.yaml``: ``cocasbi/data/frame_tiny.npz``.

Recipe (deterministic; about 1 minute of COLA runs plus a few seconds of fitting):

1. 32 COLA simulations of ``tiny.yaml`` (32³ particles, 64 Mpc/h, 10 steps, fiducial
   cosmology), initial conditions from ``simulation_seed(1, i)``, i = 0 … 31, stored with
   :func:`cocasbi.frame.training.data.make_training_data` in ``DATA_DIR`` (resumable);
2. SVD time basis of their residual momenta, K = 4 functions;
3. transfer functions T1_k, T2_k(|k|) fitted by linear least squares, cosmology degree 0
   (single cosmology).

The held-out seeds used by the tests are ``simulation_seed(2, i)``.

    python experiments/make_tiny_frame.py [DATA_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from cocasbi.config import load_config
from cocasbi.frame.emulator import FrameEmulator
from cocasbi.frame.training.basis import fit_time_basis
from cocasbi.frame.training.data import make_training_data
from cocasbi.frame.training.transfer import fit_transfer
from cocasbi.frame.transfer import CosmologyFeatures

MASTER_SEED, N_SIMS, K = 1, 32, 4
OUT = Path(__file__).resolve().parents[1] / "cocasbi" / "data" / "frame_tiny.npz"

if __name__ == "__main__":
    data_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/out/frame_data_tiny")
    cfg = load_config("tiny")
    paths = make_training_data(cfg, data_dir, N_SIMS, master_seed=MASTER_SEED)
    basis = fit_time_basis(paths, K=K, drift_ridge=float("inf"))  # the shipped file: plain SVD
    model = fit_transfer(paths, basis, CosmologyFeatures(degree=0), progress=True)
    meta = {"config": "tiny", "n_particles": 32, "box_size": 64.0, "n_steps": 10,
            "train_master_seed": MASTER_SEED, "n_train_sims": N_SIMS, "K": K,
            "captured_fraction": float(basis.captured_fraction()[K - 1]),
            "recipe": "experiments/make_tiny_frame.py"}
    FrameEmulator("transfer", basis, model, meta).save(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.1f} kB); captured fraction "
          f"{meta['captured_fraction']:.4f}")
