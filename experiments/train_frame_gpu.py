"""Paper-size styled V-net frame on a GPU, then compared with the transfer-function frame.

Run through ``experiments/train_frame_gpu.sh`` (writes everything under ``$OUT``):

1. ``N_TRAIN`` COLA-20 runs of paper.yaml (seeds ``SeedSequence(1, (i,))``, the CPU
   experiment's training seeds) and ``N_TEST`` held-out runs (``SeedSequence(2, (i,))``);
2. the V-net (6 input channels Ψ1, Ψ2; 3K = 12 outputs; base 16 channels, 3 levels) learns the
   correction to the transfer-function frame on whole 64³ boxes, for ``BUDGET_S`` seconds on
   CUDA; the last 2 training runs are the validation set;
3. evaluation on held-out seeds: fractional frame error, model time on GPU and CPU, and COCA
   with 0, 1, 2, 4, 8 forces for both frames against a PM-100 reference (P(k), 1 − r²).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coca_paper as cp  # noqa: E402

from cocasbi.config import load_config  # noqa: E402
from cocasbi.frame.basis import fit_time_basis  # noqa: E402
from cocasbi.frame.data import ic_seed, list_samples, make_training_data  # noqa: E402
from cocasbi.frame.emulator import FrameEmulator, load_frame  # noqa: E402
from cocasbi.frame.neural import train_vnet_frame  # noqa: E402
from cocasbi.frame.transfer import CosmologyFeatures, fit_transfer  # noqa: E402
from cocasbi.simulation import simulate  # noqa: E402

N_TRAIN = int(os.environ.get("N_TRAIN", 24))
N_TEST = int(os.environ.get("N_TEST", 2))
BUDGET_S = float(os.environ.get("BUDGET_S", 240))
EPOCHS = int(os.environ.get("EPOCHS", 400))


def main(out: Path, work: Path):
    out.mkdir(parents=True, exist_ok=True)
    log = {"config": os.environ.get("CONFIG", "paper"),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(os.environ.get("CONFIG", "paper"))
    box, nm, nsteps = cfg.simulation.box_size, cfg.simulation.n_mesh, cfg.simulation.n_steps
    t0 = time.perf_counter()
    train = make_training_data(cfg, work / "train", N_TRAIN, master_seed=1, progress=False)
    test = make_training_data(cfg, work / "test", N_TEST, master_seed=2, progress=False)
    log["data_seconds"] = time.perf_counter() - t0
    print("data", log["data_seconds"], flush=True)

    basis = fit_time_basis(train, K=4)
    transfer = FrameEmulator("transfer", basis, fit_transfer(train, basis, CosmologyFeatures()),
                             {"n_train_sims": len(train)})
    transfer.save(out / "frame_paper_transfer.npz")
    t0 = time.perf_counter()
    path = train_vnet_frame(train, out / "frame_paper_vnet.pt", K=4, n_val=2, epochs=EPOCHS,
                            lr=1e-3, batch_size=2, crop=None, device=device, progress=False,
                            time_budget_s=BUDGET_S, seed=0)
    log["train_seconds"] = time.perf_counter() - t0
    vnet = load_frame(path, device=device)
    log["history"] = vnet.meta["history"]
    print("trained", log["train_seconds"], flush=True)

    log["frame_errors"] = {name: cp.frame_errors(emu, basis, list_samples(work / "test"))
                           for name, emu in (("transfer", transfer), ("vnet", vnet))}
    s = cp.read_sample(test[0])
    for dev in ("cuda", "cpu") if device == "cuda" else ("cpu",):
        emu = load_frame(path, device=dev)
        emu.model.predict(s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3), box, s.cosmology)
        t0 = time.perf_counter()
        emu.model.predict(s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3), box, s.cosmology)
        log[f"vnet_predict_seconds_{dev}"] = time.perf_counter() - t0

    seed = ic_seed(2, 0)
    ref = simulate(cfg.replace(simulation={"method": "pm", "n_steps": cp.N_REF,
                                           "final_kick": False}), seed=seed)
    coca_cfg = cfg.replace(simulation={"final_kick": False})
    log["coca"] = {}
    for name, emu in (("transfer", transfer), ("vnet", vnet)):
        log["coca"][name] = {}
        for n in (0, 1, 2, 4, 8):
            r = simulate(coca_cfg.replace(simulation={"method": "coca"}), frame=emu, seed=seed,
                         forces=cp.even_forces(n, nsteps))
            log["coca"][name][n] = {**cp.metrics(r, ref, box, nm),
                                    "seconds": r.wall_time}
            print(name, n, log["coca"][name][n]["rms_dx"], flush=True)
    (out / "train_frame_gpu.json").write_text(json.dumps(log, default=float))
    print(json.dumps(log["frame_errors"], default=float))


if __name__ == "__main__":
    main(Path(os.environ.get("OUT", "experiments/out/gpu")),
         Path(os.environ.get("WORK", "/tmp/frame_gpu")))
