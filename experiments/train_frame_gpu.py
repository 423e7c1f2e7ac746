"""Paper-size styled V-net frame on a GPU, then compared with the transfer-function frame.

Run through ``experiments/train_frame_gpu.sh`` (writes everything under ``$OUT``):

1. ``N_TRAIN`` (default 32) COLA-20 runs of paper.yaml (seeds ``SeedSequence(1, (i,))``, the
   CPU experiment's training seeds) and ``N_TEST`` held-out runs (``SeedSequence(2, (i,))``),
   made on the campaign farm (:func:`cocasbi.campaign.frame_data.make_frame_data`) with
   ``WORKERS`` worker processes (default: CPU cores − 2, at most 12; same files as a
   sequential run, resumable, failures recorded, a hung run timed out after ``SIM_TIMEOUT_S``);
2. the V-net (8 input channels Ψ1, Ψ2, −∇·Ψ1, −∇·Ψ2; 3K = 12 outputs; base 16 channels,
   3 levels; output layer zero-initialised, so it starts as the transfer frame) learns the
   correction to the transfer-function frame on whole 64³ boxes for ``BUDGET_S`` seconds
   (default 200, capped at 240) on CUDA: Adam, lr ``LR`` (default 1e-3), batch ``BATCH``
   (default 2), gradient norm clipped to 1, cosine schedule sized to the budget (``EPOCHS``
   is only an upper bound); the last 2 training runs are the validation set and the weights
   of the best validation epoch are kept;
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

from cocasbi.campaign.frame_data import make_frame_data  # noqa: E402
from cocasbi.config import load_config  # noqa: E402
from cocasbi.frame.emulator import FrameEmulator, load_frame  # noqa: E402
from cocasbi.frame.training.basis import fit_time_basis  # noqa: E402
from cocasbi.frame.training.config import VNetTrainingConfig  # noqa: E402
from cocasbi.frame.training.neural import train_vnet_frame  # noqa: E402
from cocasbi.frame.training.transfer import fit_transfer  # noqa: E402
from cocasbi.frame.transfer import CosmologyFeatures  # noqa: E402
from cocasbi.nbody import force_schedule  # noqa: E402
from cocasbi.seeds import simulation_seed as ic_seed  # noqa: E402
from cocasbi.simulation import simulate  # noqa: E402

N_TRAIN = int(os.environ.get("N_TRAIN", 32))
N_TEST = int(os.environ.get("N_TEST", 2))
BUDGET_S = min(float(os.environ.get("BUDGET_S", 200)), 240.0)  # never more than 240 s
EPOCHS = int(os.environ.get("EPOCHS", 2000))  # upper bound; the budget sets the schedule
LR = float(os.environ.get("LR", 1e-3))
BATCH = int(os.environ.get("BATCH", 2))
WORKERS = int(os.environ.get("WORKERS", max(1, min(12, (os.cpu_count() or 2) - 2))))
SIM_TIMEOUT_S = float(os.environ.get("SIM_TIMEOUT_S", 300))
# whole-script deadline [s]: the training budget shrinks if data generation ran long, leaving
# EVAL_RESERVE_S for the evaluation and ~1.5 s per training run for reading the data
TOTAL_S = float(os.environ.get("TOTAL_S", 420))
EVAL_RESERVE_S = float(os.environ.get("EVAL_RESERVE_S", 100))
T_START = time.perf_counter()


def make_data(cfg, out_dir: Path, n: int, master_seed: int) -> list[Path]:
    """Frame training data on the campaign farm: WORKERS processes, one thread each (run i
    uses SeedSequence(master_seed, (i,)) whichever worker makes it). The farm's worker
    processes are spawned, so CUDA in this process is unaffected."""
    paths, report = make_frame_data(
        cfg, out_dir, n, master_seed=master_seed, progress=False,
        execution={"workers": WORKERS, "threads_per_worker": 1, "timeout": SIM_TIMEOUT_S})
    if len(paths) < n:
        raise RuntimeError(f"{n - len(paths)} of {n} training runs failed: {report.counts} "
                           f"(see {out_dir}/failures)")
    return paths


def main(out: Path, work: Path):
    out.mkdir(parents=True, exist_ok=True)
    log = {"config": os.environ.get("CONFIG", "paper"), "n_train": N_TRAIN,
           "budget_s": BUDGET_S, "lr": LR, "batch_size": BATCH, "epochs_max": EPOCHS,
           "workers": WORKERS}
    cfg = load_config(os.environ.get("CONFIG", "paper"))
    box, nm, nsteps = cfg.simulation.box_size, cfg.simulation.n_mesh, cfg.simulation.n_steps
    t0 = time.perf_counter()
    train = make_data(cfg, work / "train", N_TRAIN, master_seed=1)
    test = make_data(cfg, work / "test", N_TEST, master_seed=2)
    log["data_seconds"] = time.perf_counter() - t0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print("data", log["data_seconds"], flush=True)

    basis = fit_time_basis(train, K=4)
    transfer = FrameEmulator("transfer", basis, fit_transfer(train, basis, CosmologyFeatures()),
                             {"n_train_sims": len(train)})
    transfer.save(out / "frame_paper_transfer.npz")
    t0 = time.perf_counter()
    budget = min(BUDGET_S, max(20.0, TOTAL_S - (t0 - T_START) - EVAL_RESERVE_S - 1.5 * N_TRAIN))
    log["budget_used_s"] = budget
    print("training budget", budget, flush=True)
    settings = VNetTrainingConfig(K=4, n_val=2, epochs=EPOCHS, lr=LR, batch_size=BATCH,
                                  crop=None, time_budget_s=budget, seed=0, grad_clip=1.0,
                                  density=True)
    path = train_vnet_frame(train, out / "frame_paper_vnet.pt", settings, device=device,
                            progress=False)
    log["train_seconds"] = time.perf_counter() - t0
    vnet = load_frame(path, device=device)
    log["history"] = vnet.meta["history"]
    log["best_epoch"] = vnet.meta.get("best_epoch")
    log["schedule_epochs"] = vnet.meta.get("schedule_epochs")
    print("trained", log["train_seconds"], flush=True)
    _dump(out, log)  # partial results survive a timeout in the evaluation

    log["frame_errors"] = {name: cp.frame_errors(emu, basis, test)
                           for name, emu in (("transfer", transfer), ("vnet", vnet))}
    print(json.dumps(log["frame_errors"], default=float), flush=True)
    _dump(out, log)
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
                         forces=force_schedule(f"even:{n}", nsteps, final_kick=False))
            log["coca"][name][n] = {**cp.metrics(r, ref, box, nm),
                                    "seconds": r.wall_time}
            print(name, n, log["coca"][name][n]["rms_dx"], flush=True)
    log["total_seconds"] = time.perf_counter() - T_START
    _dump(out, log)


def _dump(out: Path, log: dict) -> None:
    (out / "train_frame_gpu.json").write_text(json.dumps(log, default=float))


if __name__ == "__main__":
    main(Path(os.environ.get("OUT", "experiments/out/gpu")),
         Path(os.environ.get("WORK", "/tmp/frame_gpu")))
