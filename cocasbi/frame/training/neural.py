"""Training the styled V-net frame model (the runtime side is :mod:`cocasbi.frame.neural`).

:func:`train_vnet_frame` fits the time basis (and the base transfer model) on the training
files, normalises inputs and targets, trains a :class:`~cocasbi.frame.vnet.StyledVNet` with
:func:`cocasbi.frame.training.train.train` and saves the frame; its settings are one
:class:`~cocasbi.frame.training.config.VNetTrainingConfig`. Arrays are float32 tensors for the
network, float64 for the normalisation constants.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.checkpoint import load_model, read_checkpoint, resolve_device
from cocasbi.frame.emulator import FrameEmulator
from cocasbi.frame.neural import VNetFrameModel, lattice_divergence, save_vnet_frame
from cocasbi.frame.training.basis import DRIFT_RIDGE, fit_time_basis
from cocasbi.frame.training.config import VNetTrainingConfig
from cocasbi.frame.training.data import iter_samples
from cocasbi.frame.training.train import _batch, evaluate, train
from cocasbi.frame.training.transfer import fit_transfer
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel
from cocasbi.frame.vnet import StyledVNet


class _ArrayDataset(Sequence):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def build_dataset(model: VNetFrameModel, basis: TimeBasis, paths: Sequence[Path]):
    """(input, style, target) float32 arrays for each simulation, held in memory."""
    items = []
    for s in iter_samples(paths):
        c = basis.project(s.residual)
        p1, p2 = s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3)
        items.append((model.inputs(p1, p2), model.style(s.cosmology),
                      model.targets(c, p1, p2, s.box_size, s.cosmology)))
    return _ArrayDataset(items)


def _scales(paths, basis: TimeBasis, base: TransferModel | None, density: bool = False):
    """Input scales (rms of Ψ1, Ψ2 [Mpc/h], with ``density`` also of their lattice
    divergences) and s_k (rms of the target c_k [Mpc/h]) over the files."""
    n_in = 4 if density else 2
    acc = np.zeros(n_in + basis.K)
    count = 0
    for s in iter_samples(paths):
        c = basis.project(s.residual).reshape(basis.K, -1, 3)
        if base is not None:
            c = c - base.predict(s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3), s.box_size,
                                 s.cosmology)
        psi = [np.asarray(p, dtype=np.float64) for p in (s.psi1, s.psi2)]
        ms = [np.mean(p**2) for p in psi]
        if density:
            n = round((psi[0].size / 3) ** (1 / 3))
            ms += [np.mean(lattice_divergence(np.moveaxis(p.reshape(n, n, n, 3), -1, 0)) ** 2)
                   for p in psi]
        acc += np.concatenate([ms, np.mean(c**2, axis=(1, 2))])
        count += 1
    rms = np.sqrt(acc / count)
    return rms[:n_in], rms[n_in:]


def train_vnet_frame(paths: Sequence[Path], out: str | Path,
                     config: VNetTrainingConfig | None = None, *, device: str = "cpu",
                     resume: bool = False, progress: bool = True) -> Path:
    """Fit the basis (and base transfer model) on the training files, train the V-net, save.

    Parameters
    ----------
    paths:
        Training data files (:mod:`cocasbi.frame.training.data`); the last ``config.n_val``
        are the validation set.
    out:
        The frame file to write (loads with :func:`cocasbi.frame.load_frame`). Checkpoints go
        to ``out`` + ``.ckpt`` (resumable), the best-validation weights to ``out`` + ``.best``.
    config:
        The training settings (default: ``VNetTrainingConfig()``); see its fields. With
        ``time_budget_s`` training stops after the last whole epoch that fits in the budget,
        on a cosine schedule shortened to the epochs the budget is estimated to allow. The
        network starts as the base model (zero-initialised output layer).
    device:
        Where the network trains (``cpu``, ``cuda``, ``auto``); the saved frame loads on CPU.
    resume:
        Continue from the checkpoint (same settings required).
    progress:
        Show progress bars.

    Returns
    -------
    Path
        The saved frame.
    """
    cfg = config or VNetTrainingConfig()
    out = Path(out)
    paths = list(paths)
    if len(paths) <= cfg.n_val:
        raise ValueError(f"{len(paths)} data files leave none for training after "
                         f"n_val={cfg.n_val} for validation")
    K = cfg.K
    train_paths, val_paths = ((paths[:-cfg.n_val], paths[-cfg.n_val:]) if cfg.n_val
                              else (paths, []))
    features = CosmologyFeatures(degree=cfg.degree)
    basis = fit_time_basis(train_paths, K=K)  # drift-weighted: so is the loss
    base_model = fit_transfer(train_paths, basis, features) if cfg.base == "transfer" else None
    in_scale, out_scale = _scales(train_paths, basis, base_model, cfg.density)
    if cfg.common_scale:
        out_scale = np.full(K, np.sqrt(np.mean(out_scale**2)))
    torch.manual_seed(cfg.seed)
    net = StyledVNet(8 if cfg.density else 6, 3 * K, len(features.names), cfg.base_channels,
                     cfg.levels)
    # start exactly at the base model: the output layer is zero, so the first steps only
    # grow the correction instead of first undoing a random O(1) output
    torch.nn.init.zeros_(net.out.weight)
    torch.nn.init.zeros_(net.out.bias)
    model = VNetFrameModel(net, K, in_scale, out_scale, features, base_model)
    train_set = build_dataset(model, basis, train_paths)
    val_set = build_dataset(model, basis, val_paths) if val_paths else None
    ckpt = out.with_name(out.name + ".ckpt")
    best = out.with_name(out.name + ".best") if cfg.keep_best and val_set else None
    if best is not None and not resume:
        best.unlink(missing_ok=True)
    t_start = time.perf_counter()
    schedule, budget = cfg.epochs, cfg.time_budget_s
    if budget is not None and not (resume and ckpt.exists()):
        schedule = _budget_epochs(net, train_set, val_set, cfg.batch_size, cfg.crop, device,
                                  cfg.epochs, budget)
        budget -= time.perf_counter() - t_start
    elif resume and ckpt.exists():
        schedule = read_checkpoint(ckpt)["settings"]["schedule_epochs"]
    common = dict(lr=cfg.lr, batch_size=cfg.batch_size, checkpoint_path=ckpt, device=device,
                  progress=progress, seed=cfg.seed, crop=cfg.crop, schedule_epochs=schedule,
                  grad_clip=cfg.grad_clip, best_path=best)
    if budget is None:
        history = train(net, train_set, val_set, epochs=schedule, resume=resume, **common)
    else:  # chunks of epochs on the cosine schedule until the budget is spent
        t0, done, per_epoch = time.perf_counter(), 0, 0.0
        while done < schedule:
            left = budget - (time.perf_counter() - t0)
            chunk = 1 if per_epoch == 0 else int(left // per_epoch)
            if chunk < 1:
                break
            t1 = time.perf_counter()
            history = train(net, train_set, val_set, epochs=min(schedule, done + chunk),
                            resume=resume or done > 0, **common)
            n_new = len(history["train_loss"]) - done
            done = len(history["train_loss"])
            per_epoch = (time.perf_counter() - t1) / max(n_new, 1)
            if n_new == 0:
                break
    best_epoch = len(history["train_loss"])
    if best is not None and best.exists():
        best_net, info = load_model(best, map_location="cpu")
        net.load_state_dict(best_net.state_dict())
        best_epoch = int(info["epoch"])
    net.to("cpu")
    meta = {"n_train_sims": len(train_paths), "n_val_sims": len(val_paths), "K": K,
            "drift_ridge": DRIFT_RIDGE,
            "epochs": len(history["train_loss"]), "best_epoch": best_epoch,
            "schedule_epochs": schedule, "config": cfg.model_dump(),
            "history": {k: [float(v) for v in vals] for k, vals in history.items()}}
    emu = FrameEmulator("vnet", basis, model, meta)
    return save_vnet_frame(out, emu.basis, emu.model, emu.meta)


def _budget_epochs(net, train_set, val_set, batch_size, crop, device, epochs, budget_s) -> int:
    """Epochs that fit in ``budget_s``: times two training steps and a validation pass on a
    copy of ``net`` (after a warm-up step), with a 10 % margin; between 1 and ``epochs``."""
    dev = resolve_device(device)
    probe = copy.deepcopy(net).to(dev).train()
    opt = torch.optim.Adam(probe.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(0)
    idx = list(range(min(batch_size, len(train_set))))

    def step():
        x, s, y = _batch(train_set, idx, dev, crop, gen)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(probe(x, s), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()
    t0 = time.perf_counter()
    step()
    step()
    per_step = (time.perf_counter() - t0) / 2
    n_steps = -(-len(train_set) // batch_size)
    t_val = 0.0
    if val_set:
        t0 = time.perf_counter()
        evaluate(probe, [val_set[0]], 1, dev)
        t_val = (time.perf_counter() - t0) * len(val_set)
    per_epoch = per_step * n_steps + t_val + 0.05  # + checkpoint write
    return int(max(1, min(epochs, 0.9 * budget_s // per_epoch)))
