"""The styled V-net as a frame model: datasets, training and (de)normalisation.

The network (:class:`cocasbi.frame.vnet.StyledVNet`, trained by
:func:`cocasbi.frame.train.train`) maps the normalised 2LPT displacements (6 channels:
Ψ1/σ1, Ψ2/σ2; by default also their lattice divergences δ1/σ_δ1, δ2/σ_δ2, 8 channels) and a
style vector (the normalised cosmology x = (θ − centre)/scale for
(Ω_m, σ_8)) to the 3K channels of the time-basis coefficient fields c_k / s_k. It is thus
evaluated once per simulation (not once per query time).

By default it learns the correction on top of the transfer model (``base="transfer"``):
target = (c_k − c_k^transfer) / s_k, so an untrained or weak network does little harm and
training capacity goes to what the linear model misses. The output layer starts at zero
(the untrained net *is* the transfer model), and by default s_k is one common scale, so the
training loss is the physical error of p_ML relative to the transfer model's (1 = no gain).
σ1, σ2, s_k, the basis and the base model are stored with the weights
(``save_model(..., extra=...)``). Tensors are float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cocasbi.frame.basis import TimeBasis, fit_time_basis
from cocasbi.frame.data import iter_samples
from cocasbi.frame.emulator import FrameEmulator
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel, fit_transfer


def lattice_divergence(psi: np.ndarray) -> np.ndarray:
    """−∇·Ψ per lattice cell (spectral derivative, k in radians per cell) of (3, N, N, N) Ψ.

    The displacements' large-scale modes dominate Ψ's variance, while the V-net's target (the
    residual the transfer model misses) lives at k ≳ 0.3 h/Mpc; the divergence (the linear
    density, up to sign and units) carries those scales at order-unity amplitude.
    """
    n = psi.shape[-1]
    k = 2 * np.pi * np.fft.fftfreq(n)
    kz = 2 * np.pi * np.fft.rfftfreq(n)
    f = [np.fft.rfftn(psi[i]) for i in range(3)]
    div = 1j * (k[:, None, None] * f[0] + k[None, :, None] * f[1] + kz[None, None, :] * f[2])
    return -np.fft.irfftn(div, s=psi.shape[1:], axes=(0, 1, 2))


class VNetFrameModel:
    """``predict(psi1, psi2, box_size, cosmology) -> c (K, N³, 3)`` with a styled V-net."""

    def __init__(self, net, K: int, in_scale, out_scale, features: CosmologyFeatures,
                 base: TransferModel | None = None, device: str = "cpu"):
        self.net, self.K, self.features, self.base = net, K, features, base
        self.in_scale = np.asarray(in_scale, dtype=np.float64)
        self.out_scale = np.asarray(out_scale, dtype=np.float64)
        self.device = device

    def style(self, cosmology: dict[str, float]) -> np.ndarray:
        f = CosmologyFeatures(self.features.names, self.features.centre, self.features.scale, 1)
        return f(cosmology)[1:].astype(np.float32)

    def inputs(self, psi1, psi2) -> np.ndarray:
        """(6, N, N, N) or (8, N, N, N) float32 normalised input channels.

        Ψ1/σ1, Ψ2/σ2 and, when ``in_scale`` has four entries, the lattice divergences
        δ1/σ_δ1, δ2/σ_δ2 (see :func:`lattice_divergence`).
        """
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        fields = [np.moveaxis(np.asarray(p, dtype=np.float64).reshape(n, n, n, 3), -1, 0)
                  for p in (psi1, psi2)]
        if len(self.in_scale) == 4:
            fields += [lattice_divergence(f)[None] for f in fields]
        elif len(self.in_scale) != 2:
            raise ValueError(f"in_scale must have 2 or 4 entries, got {len(self.in_scale)}")
        x = [f / s for f, s in zip(fields, self.in_scale, strict=True)]
        return np.concatenate(x).astype(np.float32)

    def targets(self, coeffs: np.ndarray, psi1, psi2, box_size, cosmology) -> np.ndarray:
        """(3K, N, N, N) float32 normalised targets from true coefficients (K, N³ × 3)."""
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        c = np.asarray(coeffs, dtype=np.float64).reshape(self.K, n**3, 3)
        if self.base is not None:
            c = c - self.base.predict(psi1, psi2, box_size, cosmology)
        c = c / self.out_scale[:, None, None]
        return np.moveaxis(c.reshape(self.K, n, n, n, 3), -1, 1).reshape(
            3 * self.K, n, n, n).astype(np.float32)

    @torch.no_grad()
    def predict(self, psi1, psi2, box_size: float, cosmology: dict[str, float]) -> np.ndarray:
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        x = torch.from_numpy(self.inputs(psi1, psi2))[None].to(self.device)
        s = torch.from_numpy(self.style(cosmology))[None].to(self.device)
        self.net.eval()
        y = self.net(x, s)[0].double().cpu().numpy().reshape(self.K, 3, n, n, n)
        c = np.moveaxis(y, 1, -1).reshape(self.K, n**3, 3) * self.out_scale[:, None, None]
        if self.base is not None:
            c = c + self.base.predict(psi1, psi2, box_size, cosmology)
        return c


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


def train_vnet_frame(paths: Sequence[Path], out: str | Path, *, K: int = 4, n_val: int = 2,
                     epochs: int = 20, lr: float = 1e-3, batch_size: int = 4,
                     crop: int | None = None, base_channels: int = 16, levels: int = 3,
                     device: str = "cpu", resume: bool = False, seed: int = 0,
                     progress: bool = True, base: str | None = "transfer",
                     features: CosmologyFeatures | None = None,
                     time_budget_s: float | None = None, grad_clip: float | None = 1.0,
                     density: bool = True, keep_best: bool = True,
                     common_scale: bool = True) -> Path:
    """Fit the basis (and base transfer model) on the training files, train the V-net, save.

    The last ``n_val`` files are the validation set. Checkpoints go to ``out`` + ``.ckpt``
    (resumable), the best-validation weights to ``out`` + ``.best``. With ``time_budget_s``,
    training stops after the last whole epoch that fits in the budget, and the cosine
    learning-rate schedule is shortened (from ``epochs``) to the number of epochs the budget
    is estimated to allow, so that it anneals before time runs out. The network starts as the
    base model (zero-initialised output layer); ``grad_clip`` clips the global gradient norm;
    ``density`` adds the divergences of Ψ1, Ψ2 as input channels (8 instead of 6);
    ``keep_best`` saves the weights of the epoch with the lowest validation loss (else the
    last). ``common_scale`` normalises all K target fields by one scale (the rms over k of
    s_k), so that the loss is the physical mean squared error of p_ML (the b_k are
    orthonormal) and the training objective is the frame error; with per-k scales the
    small, hard-to-predict higher-order c_k weigh as much as c_0. Returns the saved frame path
    (loads with :func:`cocasbi.frame.load_frame`).
    """
    from cocasbi.frame.train import load_model, train
    from cocasbi.frame.vnet import StyledVNet

    out = Path(out)
    paths = list(paths)
    train_paths, val_paths = (paths[:-n_val], paths[-n_val:]) if n_val else (paths, [])
    features = features or CosmologyFeatures(degree=1)
    basis = fit_time_basis(train_paths, K=K)
    base_model = (fit_transfer(train_paths, basis, CosmologyFeatures(degree=features.degree))
                  if base == "transfer" else None)
    in_scale, out_scale = _scales(train_paths, basis, base_model, density)
    if common_scale:
        out_scale = np.full(K, np.sqrt(np.mean(out_scale**2)))
    style_dim = len(features.names)
    torch.manual_seed(seed)
    net = StyledVNet(8 if density else 6, 3 * K, style_dim, base_channels, levels)
    # start exactly at the base model: the output layer is zero, so the first steps only
    # grow the correction instead of first undoing a random O(1) output
    torch.nn.init.zeros_(net.out.weight)
    torch.nn.init.zeros_(net.out.bias)
    model = VNetFrameModel(net, K, in_scale, out_scale, features, base_model)
    train_set = build_dataset(model, basis, train_paths)
    val_set = build_dataset(model, basis, val_paths) if val_paths else None
    ckpt = out.with_name(out.name + ".ckpt")
    best = out.with_name(out.name + ".best") if keep_best and val_set else None
    if best is not None and not resume:
        best.unlink(missing_ok=True)
    t_start = time.perf_counter()
    schedule = epochs
    if time_budget_s is not None and not (resume and ckpt.exists()):
        schedule = _budget_epochs(net, train_set, val_set, batch_size, crop, device, epochs,
                                  time_budget_s)
        time_budget_s -= time.perf_counter() - t_start
    elif resume and ckpt.exists():
        schedule = torch.load(ckpt, map_location="cpu",
                              weights_only=False)["settings"]["schedule_epochs"]
    common = dict(lr=lr, batch_size=batch_size, checkpoint_path=ckpt, device=device,
                  progress=progress, seed=seed, crop=crop, schedule_epochs=schedule,
                  grad_clip=grad_clip, best_path=best)
    if time_budget_s is None:
        history = train(net, train_set, val_set, epochs=schedule, resume=resume, **common)
    else:  # chunks of epochs on the cosine schedule until the budget is spent
        t0, done, per_epoch = time.perf_counter(), 0, 0.0
        while done < schedule:
            left = time_budget_s - (time.perf_counter() - t0)
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
    emu = FrameEmulator("vnet", basis, model,
                        {"n_train_sims": len(train_paths), "n_val_sims": len(val_paths),
                         "K": K, "epochs": len(history["train_loss"]), "best_epoch": best_epoch,
                         "schedule_epochs": schedule, "lr": lr, "grad_clip": grad_clip,
                         "density": density, "common_scale": common_scale, "crop": crop,
                         "base": base,
                         "history": {k: [float(v) for v in vals]
                                     for k, vals in history.items()}})
    return save_vnet_frame(out, emu)


def _budget_epochs(net, train_set, val_set, batch_size, crop, device, epochs, budget_s) -> int:
    """Epochs that fit in ``budget_s``: times two training steps and a validation pass on a
    copy of ``net`` (after a warm-up step), with a 10 % margin; between 1 and ``epochs``."""
    import copy

    import torch.nn.functional as F

    from cocasbi.frame.train import _batch, evaluate, resolve_device

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


def save_vnet_frame(path: str | Path, emu: FrameEmulator) -> Path:
    from cocasbi.frame.train import save_model

    m: VNetFrameModel = emu.model
    f = m.features
    extra = {"kind": "vnet", "K": m.K, "in_scale": m.in_scale, "out_scale": m.out_scale,
             "feature_names": list(f.names), "feature_centre": list(f.centre),
             "feature_scale": list(f.scale), "feature_degree": f.degree,
             "basis": emu.basis.to_dict(),
             "base": m.base.to_dict() if m.base is not None else None, "meta": emu.meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, m.net, extra)
    return path


def load_vnet_frame(path: str | Path, device: str = "cpu") -> FrameEmulator:
    from cocasbi.frame.train import load_model

    net, extra = load_model(path, map_location=device)
    if extra.get("kind") != "vnet":
        raise ValueError(f"{path}: not a V-net frame")
    feats = CosmologyFeatures(tuple(extra["feature_names"]), tuple(extra["feature_centre"]),
                              tuple(extra["feature_scale"]), int(extra["feature_degree"]))
    base = TransferModel.from_dict(extra["base"]) if extra["base"] is not None else None
    model = VNetFrameModel(net, int(extra["K"]), extra["in_scale"], extra["out_scale"], feats,
                           base, device)
    return FrameEmulator("vnet", TimeBasis.from_dict(extra["basis"]), model, extra["meta"])
