"""Training the local network on top of the force-input transfer frame
(the runtime side is :mod:`cocasbi.frame.local`).

Steps: :func:`force_transfer_frame` fits the drift-weighted time basis and the force-input
transfer model exactly from per-run moments; :func:`prepare_sample` turns one training file
into the network's unnormalised input fields and its target, the correction
c_k − c_k^transfer (3K channels), where c_k = Σ_t d_k(t) p_res(t) are the coefficients in
the drift-weighted dual basis, so an L2 loss on them is the drift-weighted frame error (up
to the basis truncation, a constant); :class:`HeldOut` gives the exact held-out
drift-weighted error of any predicted c_k without the run's 130 MB residual;
:func:`train_local` trains on random periodic crops (padded crops cut from the periodic
box, so every cell sees its true neighbours) with Adam, a cosine learning rate and gradient
clipping, and records the held-out error during training (learning curves).
Fields float32, normalisation constants and errors float64.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from cocasbi.cosmology import Cosmology
from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.local import LocalFrameModel, LocalNet, local_inputs, to_channels
from cocasbi.frame.training.basis import drift_matrix, drift_metric, weighted_basis
from cocasbi.frame.training.data import read_sample
from cocasbi.frame.training.moments import SimMoments, fit_per_time, project_model
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel
from cocasbi.seeds import Stream, stream_seed


def force_transfer_frame(moments: Sequence[SimMoments], sources: Sequence[int],
                         force_times: Sequence[float], K: int = 4, ridge: float = 0.01,
                         degree: int = 1) -> tuple[TimeBasis, TransferModel]:
    """Drift-weighted basis (``ridge``, K functions) and the transfer model with inputs Ψ1, Ψ2
    and the forces of the moments' sources ``sources`` (0, 1 = Ψ1, Ψ2; then the force
    fields, at ``force_times``), fitted exactly from the moments."""
    idx = list(sources)
    if idx[:2] != [0, 1] or len(idx) != 2 + len(force_times):
        raise ValueError(f"sources {idx} must be 0, 1 and one per force time {force_times}")
    moments = [replace(m, cross=m.cross[np.ix_(idx, idx)], vec=m.vec[:, idx]) for m in moments]
    metric = drift_metric(np.mean([m.drift for m in moments], axis=0), ridge)
    basis = weighted_basis(sum(m.gram for m in moments), moments[0].times, metric).truncated(K)
    f = CosmologyFeatures(degree=degree)
    model = project_model(fit_per_time(moments, f), basis, f, moments[0].box_size,
                          len(moments), tuple(force_times))
    return basis, model


@dataclass
class HeldOut:
    """What the exact drift-weighted error of a run needs (see :func:`held_out_terms`).

    With Y_j = Σ_t L_jt p_res(t) (the COLA displacement beyond LPT at boundary j) and
    β = L B (B the basis functions over time), the prediction c_k leaves
    ‖Y − β c‖² = Σ‖Y_j‖² − 2 Σ_k c_k·Z_k + Σ_kl (βᵀβ)_kl c_k·c_l with Z_k = Σ_j β_jk Y_j,
    and at a = 1 (last row) the same with Y_last, β_last. Fields (K, N³, 3) float32.
    """

    z: np.ndarray
    y_last: np.ndarray
    beta: np.ndarray
    yy: float
    yy_last: float

    def errors(self, coeffs: np.ndarray) -> dict[str, float]:
        """``drift`` (rms over the boundaries) and ``drift_final`` (a = 1) relative errors of
        the frame with coefficient fields ``coeffs`` (K, N³, 3)."""
        c = np.asarray(coeffs, dtype=np.float64).reshape(len(self.z), -1)
        cz = np.einsum("km,km->", c, self.z.reshape(len(self.z), -1), dtype=np.float64)
        cc = c @ c.T
        num = self.yy - 2 * cz + np.sum((self.beta.T @ self.beta) * cc)
        bl = self.beta[-1]
        cl = bl @ c
        num_l = self.yy_last - 2 * cl @ self.y_last.reshape(-1) + cl @ cl
        return {"drift": float(np.sqrt(max(num, 0) / self.yy)),
                "drift_final": float(np.sqrt(max(num_l, 0) / self.yy_last))}


def held_out_terms(path: str | Path, basis: TimeBasis) -> HeldOut:
    """:class:`HeldOut` of one data file (its residual, schedule and cosmology)."""
    s = read_sample(path)
    with h5py.File(path, "r") as f:
        boundaries, half = f["boundaries"][...], f["half"][...]
    L = drift_matrix(s.times, boundaries, half, Cosmology(**s.cosmology))
    r = s.residual.reshape(len(s.times), -1)
    y = (L @ r).astype(np.float64)  # (n_steps, 3 N³)
    beta = L @ basis.functions.T
    z = (beta.T @ y).astype(np.float32).reshape(basis.K, -1, 3)
    return HeldOut(z, y[-1].astype(np.float32), beta, float(np.sum(y * y)),
                   float(y[-1] @ y[-1]))


def prepare_sample(path: str | Path, base: TransferModel, basis: TimeBasis,
                   cache_dir: str | Path | None = None) -> dict:
    """Unnormalised input fields (C_f, N, N, N), target c − c^transfer (3K, N, N, N)
    [Mpc/h] (float32), cosmology and transfer prediction (K, N³, 3) of one file; kept as
    ``<cache_dir>/<stem>.npz`` when ``cache_dir`` is given."""
    cache = Path(cache_dir) / f"{Path(path).stem}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as d:
            return {"fields": d["fields"], "target": d["target"], "base": d["base"],
                    "cosmology": dict(zip(d["cos_names"].tolist(), d["cos_values"].tolist(),
                                          strict=True)),
                    "box_size": float(d["box_size"])}
    s = read_sample(path)
    p1, p2 = s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3)
    c_base, fields = local_inputs(base, p1, p2, s.box_size, s.cosmology)
    c_true = basis.project(s.residual.reshape(len(s.times), -1, 3))
    out = {"fields": fields,
           "target": to_channels(c_true - c_base, s.n).astype(np.float32),
           "base": c_base.astype(np.float32), "cosmology": dict(s.cosmology),
           "box_size": float(s.box_size)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, fields=out["fields"], target=out["target"], base=out["base"],
                 cos_names=np.array(list(s.cosmology)),
                 cos_values=np.array(list(s.cosmology.values())), box_size=s.box_size)
        tmp.replace(cache)
    return out


def normalisation(samples: Sequence[dict]) -> tuple[np.ndarray, float]:
    """Input scales (rms of each field channel, C_f) and the common output scale s (rms of
    the target over all channels [Mpc/h]) over the training samples (float64)."""
    f2 = np.mean([np.mean(np.square(s["fields"], dtype=np.float64), axis=(1, 2, 3))
                  for s in samples], axis=0)
    t2 = np.mean([np.mean(np.square(s["target"], dtype=np.float64)) for s in samples])
    return np.sqrt(f2), float(np.sqrt(t2))


def periodic_crop(x: torch.Tensor, origin, size: int, margin: int) -> torch.Tensor:
    """Sub-volume (C, size + 2·margin, …) of the periodic field x (C, n, n, n) whose inner
    ``size``³ block starts at ``origin`` (wrap-around indexing)."""
    n = x.shape[-1]
    out = x
    for axis, o in enumerate(origin):
        idx = torch.arange(o - margin, o + size + margin) % n
        out = out.index_select(axis + 1, idx)
    return out


@dataclass(frozen=True)
class LocalTrainingSettings:
    """Settings of :func:`train_local`: ``steps`` Adam steps of ``batch`` crops of ``crop``³
    cells, learning rate ``lr`` (cosine to 0), gradient-norm clip ``grad_clip``,
    evaluation every ``eval_every`` steps, network ``hidden`` × ``dilations``."""

    steps: int = 600
    batch: int = 2
    crop: int = 24
    lr: float = 2e-3
    grad_clip: float = 1.0
    eval_every: int = 100
    hidden: int = 24
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    seed: int = 0

    def __post_init__(self):
        if min(self.steps, self.batch, self.crop, self.eval_every, self.hidden) < 1:
            raise ValueError("steps, batch, crop, eval_every and hidden must be >= 1")
        if not self.lr > 0 or not self.grad_clip > 0:
            raise ValueError("lr and grad_clip must be > 0")


def _model(net, base, in_scale, out_scale, spacing) -> LocalFrameModel:
    return LocalFrameModel(net, base, in_scale, out_scale, base.features, spacing)


def predict_sample(model: LocalFrameModel, sample: dict) -> np.ndarray:
    """The frame's c_k (K, N³, 3) float64 from a prepared sample (same as
    ``model.predict`` on the run's fields, without recomputing the inputs)."""
    from cocasbi.frame.local import from_channels

    x = model.network_input(sample["fields"], sample["cosmology"])
    with torch.no_grad():
        model.net.eval()
        y = model.net.periodic(x)[0].double().numpy()
    return sample["base"].astype(np.float64) + model.out_scale * from_channels(y, model.K)


def train_local(train: Sequence[dict], test: Sequence[tuple[dict, HeldOut]],
                base: TransferModel, settings: LocalTrainingSettings = LocalTrainingSettings(),
                progress: bool = True) -> tuple[LocalFrameModel, dict]:
    """Train a :class:`LocalNet` on prepared samples; returns the frame model and the
    history (steps, epochs = crop volumes seen / box volume, training loss, held-out drift
    errors, CPU seconds). The loss is the mean squared correction error in units of s²."""
    if not train:
        raise ValueError("no training samples")
    n = train[0]["fields"].shape[-1]
    if settings.crop > n:
        raise ValueError(f"crop {settings.crop} is larger than the grid {n}")
    in_scale, out_scale = normalisation(train)
    spacing = train[0]["box_size"] / n
    n_cos = len(base.features.names)
    net = LocalNet(train[0]["fields"].shape[0] + n_cos, 3 * base.K, settings.hidden,
                   settings.dilations)
    model = _model(net, base, in_scale, out_scale, spacing)
    xs = [model.network_input(s["fields"], s["cosmology"])[0] for s in train]
    ts = [torch.from_numpy(s["target"] / np.float32(out_scale)) for s in train]
    rng = np.random.default_rng(stream_seed(settings.seed, Stream.TRAINING))
    torch.manual_seed(int(rng.integers(2**31)))
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    r, m = net.radius, settings.crop
    hist = {"step": [], "epoch": [], "train_loss": [], "test_drift": [], "test_drift_final": [],
            "cpu_s": [], "n_train": len(train), "n_params": sum(p.numel()
                                                               for p in net.parameters())}

    def evaluate(step, loss):
        errs = [h.errors(predict_sample(model, s)) for s, h in test]
        hist["step"].append(step)
        hist["epoch"].append(step * settings.batch * m**3 / (len(train) * n**3))
        hist["train_loss"].append(loss)
        for key in ("drift", "drift_final"):
            hist[f"test_{key}"].append(float(np.sqrt(np.mean([e[key] ** 2 for e in errs]))))
        hist["cpu_s"].append(time.process_time() - c0)
        if progress:
            tqdm.write(f"step {step}: held-out drift error {hist['test_drift'][-1]:.4f}, "
                       f"training loss {loss:.4f}")
        net.train()

    c0 = time.process_time()
    if test:
        evaluate(0, float("nan"))
    running = []
    net.train()
    for step in tqdm(range(1, settings.steps + 1), disable=not progress, desc="local frame"):
        picks = rng.integers(len(train), size=settings.batch)
        origins = rng.integers(n, size=(settings.batch, 3))
        x = torch.stack([periodic_crop(xs[i], o, m, r) for i, o in zip(picks, origins,
                                                                        strict=True)])
        t = torch.stack([periodic_crop(ts[i], o, m, 0) for i, o in zip(picks, origins,
                                                                       strict=True)])
        loss = torch.mean((net(x) - t) ** 2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        running.append(loss.item())
        if test and (step % settings.eval_every == 0 or step == settings.steps):
            evaluate(step, float(np.mean(running)))
            running = []
    net.eval()
    return model, hist


def train_local_frame(paths: Sequence[str | Path], out: str | Path,
                      settings: LocalTrainingSettings = LocalTrainingSettings(), K: int = 4,
                      degree: int = 1, ridge: float = 0.01, force_times: Sequence[float] = (0.5,),
                      n_val: int = 0, progress: bool = True) -> Path:
    """Fit the force-input transfer frame on ``paths`` (training files of
    :mod:`cocasbi.frame.training.data`), train the local network on top of it and save the
    frame to ``out`` (a torch file; :func:`cocasbi.frame.load_frame` reads it). The last
    ``n_val`` files are held out: the transfer fit and the network never see them, and their
    exact drift-weighted error is recorded in the frame's metadata (``held_out_drift``)."""
    from cocasbi.frame.emulator import FrameEmulator
    from cocasbi.frame.training.moments import sample_moments
    from cocasbi.frame.transfer import lpt_forces

    paths = [Path(p) for p in paths]
    if not 0 <= n_val < len(paths):
        raise ValueError(f"n_val={n_val} must leave at least one of {len(paths)} runs to train on")
    fit, val = paths[:len(paths) - n_val], paths[len(paths) - n_val:]
    moments = []
    for p in tqdm(fit, disable=not progress, desc="moments"):
        s = read_sample(p, residual=False)
        moments.append(sample_moments(p, extra=lpt_forces(s.psi1, s.psi2, s.box_size,
                                                          s.cosmology, tuple(force_times))))
    sources = (0, 1, *range(2, 2 + len(force_times)))
    basis, base = force_transfer_frame(moments, sources, force_times, K, ridge, degree)
    train = [prepare_sample(p, base, basis) for p in fit]
    test = [(prepare_sample(p, base, basis), held_out_terms(p, basis)) for p in val]
    model, hist = train_local(train, test, base, settings, progress=progress)
    meta = {"n_train_sims": len(fit), "K": K, "basis": "drift-weighted", "ridge": ridge,
            "degree": degree, "force_times": list(force_times),
            "local": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
            "made_by": "cocasbi.frame.training.local.train_local_frame"}
    if val:
        meta["held_out_drift"] = hist["test_drift"][-1]
    return FrameEmulator("local", basis, model, meta).save(out)
