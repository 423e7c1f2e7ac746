"""Generic, resumable trainer for field-to-field networks.

Datasets are any sequence (``len`` and integer indexing) whose items are
``(input (C_in, N, N, N), style (S,), target (C_out, N, N, N))`` tensors or arrays. Training
minimises the mean squared error with Adam, optionally on random periodic sub-volumes
("crops"), evaluates the validation loss each epoch, and writes an atomic checkpoint after
every epoch. All randomness (shuffling, crop offsets) comes from one ``torch.Generator``
seeded with ``seed`` whose state is checkpointed, so on CPU a resumed run reproduces the
uninterrupted one bit for bit. Checkpoints and model files are the safe format of
:mod:`cocasbi.frame.checkpoint` (read with ``weights_only=True``; they also load with
:func:`~cocasbi.frame.checkpoint.load_model`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cocasbi.frame.checkpoint import (
    CHECKPOINT_VERSION,
    atomic_save,
    build_model,
    cpu_state_dict,
    load_weights,
    model_spec,
    read_checkpoint,
    resolve_device,
    save_model,
)

__all__ = ["evaluate", "random_periodic_crop", "train"]


def random_periodic_crop(
    tensors: Sequence[torch.Tensor], size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Cut the same random periodic cube of side ``size`` from each (C, N, N, N) tensor.

    The offset along each axis is drawn uniformly from ``generator``; indices wrap around
    the box, so every sub-volume of a periodic field is equally likely.
    """
    shape = tensors[0].shape[1:]
    if any(n < size for n in shape):
        raise ValueError(f"crop size {size} exceeds the grid {tuple(shape)}")
    idx = [(torch.randint(n, (), generator=generator) + torch.arange(size)) % n for n in shape]
    return [t[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]] for t in tensors]


def _as_tensor(a: Any) -> torch.Tensor:
    """Float32 tensor from an array or tensor (no copy if it already is one)."""
    return torch.as_tensor(a, dtype=torch.float32)


def _batch(
    dataset: Sequence,
    indices: Sequence[int],
    device: torch.device,
    crop: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack items ``indices`` of ``dataset`` into device tensors.

    With ``crop``, each item is cut to a random periodic cube drawn from ``generator``.
    """
    xs, ss, ys = [], [], []
    for i in indices:
        x, s, y = (_as_tensor(a) for a in dataset[int(i)])
        if crop is not None:
            x, y = random_periodic_crop([x, y], crop, generator)
        xs.append(x)
        ss.append(s)
        ys.append(y)
    return (torch.stack(xs).to(device), torch.stack(ss).to(device), torch.stack(ys).to(device))


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Sequence, batch_size: int = 1, device: str | torch.device = "auto"
) -> float:
    """Mean squared error of ``model`` over ``dataset`` (whole volumes, no cropping).

    Leaves the model in eval mode on ``device``.
    """
    device = resolve_device(device)
    model.to(device).eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        x, s, y = _batch(dataset, idx, device)
        total += F.mse_loss(model(x, s), y, reduction="sum").item()
        count += y.numel()
    return total / count


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Snapshot of the trainer's generator and the global torch RNGs."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`_rng_states`."""
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def train(
    model: nn.Module,
    train_set: Sequence,
    val_set: Sequence | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    checkpoint_path: str | os.PathLike,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    seed: int = 0,
    crop: int | None = None,
    lr_schedule: str = "cosine",
    schedule_epochs: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    best_path: str | os.PathLike | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` with Adam on the MSE between ``model(input, style)`` and the target.

    Parameters
    ----------
    model:
        Module with ``forward(x (B, C_in, N, N, N), style (B, S))``; it should carry an
        ``hparams`` dict of constructor kwargs (see :func:`save_model`) so that checkpoints
        can be loaded with :func:`load_model`. Trained in place; left in eval mode on
        ``device``.
    train_set, val_set:
        Sequences of ``(input, style, target)``. ``val_set`` may be ``None`` or empty (the
        validation loss is then NaN); validation always uses whole volumes.
    epochs:
        Train until this many epochs are done in total (a resumed run counts the
        checkpointed ones).
    lr, batch_size, weight_decay:
        Adam settings (the last partial batch of an epoch is kept).
    checkpoint_path:
        Written atomically after every epoch: model and optimiser state, epoch, history,
        RNG states, model class and hyper-parameters, training settings.
    resume:
        Continue from ``checkpoint_path`` if it exists (training settings must match).
    device:
        ``'auto'`` picks CUDA when available.
    progress:
        Show a tqdm bar per epoch with the running loss.
    seed:
        Seeds the generator for shuffling and crop offsets.
    crop:
        Train on random periodic sub-volumes of this side (a multiple of the network's
        down-sampling factor) instead of whole volumes. Note that the network's circular
        padding wraps a crop onto itself, so cells near the crop faces see the wrong
        neighbours; crops of a few times the receptive field keep that a small effect.
    lr_schedule:
        ``'cosine'`` (anneal from ``lr`` to 0 over ``schedule_epochs``) or ``'constant'``.
    schedule_epochs:
        Length of the cosine schedule; defaults to ``epochs``. Give it explicitly to stop a
        run early and resume it later on the same schedule.
    grad_clip:
        Clip the global gradient norm to this value before each Adam step (``None``: no
        clipping). Guards against the loss spikes Adam takes on modulated convolutions.
    best_path:
        If given, the model with the lowest validation loss so far is written there with
        :func:`save_model` (extra: ``epoch``, ``val_loss``) whenever it improves; the best
        value is kept in the checkpoint, so resumed runs continue the comparison.

    Returns
    -------
    dict
        ``train_loss``, ``val_loss``, ``lr`` and ``time_s`` (wall time), one entry per epoch
        (including the epochs restored from a checkpoint).
    """
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}")
    if len(train_set) == 0:
        raise ValueError("empty training set")
    dev = resolve_device(device)
    schedule_epochs = epochs if schedule_epochs is None else schedule_epochs
    settings = dict(
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        crop=crop,
        lr_schedule=lr_schedule,
        schedule_epochs=schedule_epochs,
        weight_decay=weight_decay,
    )
    if grad_clip is not None:  # only recorded when used: older checkpoints still resume
        settings["grad_clip"] = float(grad_clip)
    spec = model_spec(model)

    model.to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_factor(epoch: int) -> float:
        if lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, schedule_epochs) / schedule_epochs))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": [], "time_s": []}
    start_epoch = 0
    best_val = math.inf

    checkpoint_path = Path(checkpoint_path)
    if resume and checkpoint_path.exists():
        # RNG states must stay on the CPU; load_state_dict moves the rest to the model's device
        ckpt = read_checkpoint(checkpoint_path)
        stored = build_model(ckpt, str(checkpoint_path))
        if type(stored) is not type(model) or stored.hparams != model.hparams:
            raise ValueError(f"{checkpoint_path}: checkpoint was written for a different model")
        load_weights(stored, ckpt["state_dict"], str(checkpoint_path))
        if ckpt["settings"] != settings:
            raise ValueError(
                f"checkpoint settings {ckpt['settings']} differ from the requested {settings}"
            )
        model.load_state_dict(ckpt["state_dict"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _restore_rng_states(ckpt["rng"], generator)
        history = ckpt["history"]
        start_epoch = ckpt["epoch"]
        best_val = ckpt.get("best_val", math.inf)

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        total, count = 0.0, 0
        bar = tqdm(
            range(0, len(order), batch_size),
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for start in bar:
            x, s, y = _batch(train_set, order[start : start + batch_size], dev, crop, generator)
            optimiser.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x, s), y)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimiser.step()
            total += loss.item() * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.4g}")
        history["lr"].append(optimiser.param_groups[0]["lr"])
        scheduler.step()
        history["train_loss"].append(total / count)
        history["val_loss"].append(
            evaluate(model, val_set, batch_size, dev) if val_set else float("nan")
        )
        history["time_s"].append(time.perf_counter() - t0)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{epochs}: train {history['train_loss'][-1]:.4g}"
                f"  val {history['val_loss'][-1]:.4g}  ({history['time_s'][-1]:.1f} s)"
            )
        val = history["val_loss"][-1]
        if best_path is not None and math.isfinite(val) and val < best_val:
            best_val = val
            save_model(best_path, model, {"epoch": epoch + 1, "val_loss": val})
        atomic_save(
            {
                "version": CHECKPOINT_VERSION,
                **spec,
                "best_val": best_val,
                "state_dict": cpu_state_dict(model),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "settings": settings,
                "rng": _rng_states(generator),
            },
            checkpoint_path,
        )
    model.eval()
    return history
