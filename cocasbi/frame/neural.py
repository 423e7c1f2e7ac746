"""The styled V-net as a frame model at inference time: (de)normalisation and frame files.

The network (:class:`cocasbi.frame.vnet.StyledVNet`, trained by
:func:`cocasbi.frame.training.neural.train_vnet_frame`) maps the normalised 2LPT
displacements (6 channels: Ψ1/σ1, Ψ2/σ2; by default also their lattice divergences δ1/σ_δ1,
δ2/σ_δ2, 8 channels) and a style vector (the normalised cosmology x = (θ − centre)/scale for
(Ω_m, σ_8)) to the 3K channels of the time-basis coefficient fields c_k / s_k. It is thus
evaluated once per simulation (not once per query time).

By default it learns the correction on top of the transfer model (``base="transfer"``):
target = (c_k − c_k^transfer) / s_k, so an untrained or weak network does little harm and
training capacity goes to what the linear model misses. The output layer starts at zero
(the untrained net *is* the transfer model), and by default s_k is one common scale, so the
training loss is the physical error of p_ML relative to the transfer model's (1 = no gain).
σ1, σ2, s_k, the basis and the base model are stored with the weights
(:func:`save_vnet_frame`; :func:`read_vnet_frame` reads them back from a model file,
validating every entry). Tensors are float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.checkpoint import build_model, load_weights, read_checkpoint, save_model
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel, source_modes


def lattice_divergence(psi: np.ndarray) -> np.ndarray:
    """−∇·Ψ per lattice cell (spectral derivative, k in radians per cell) of (3, N, N, N) Ψ.

    The displacements' large-scale modes dominate Ψ's variance, while the V-net's target (the
    residual the transfer model misses) lives at k ≳ 0.3 h/Mpc; the divergence (the linear
    density, up to sign and units) carries those scales at order-unity amplitude.
    """
    return divergence_from_modes(np.fft.rfftn(np.asarray(psi, dtype=np.float64),
                                              axes=(1, 2, 3)))


def divergence_from_modes(f: np.ndarray) -> np.ndarray:
    """:func:`lattice_divergence` from the Fourier modes (3, N, N, N//2+1) of Ψ (e.g. those
    :func:`cocasbi.frame.transfer.source_modes` computed for the transfer model)."""
    n = f.shape[1]
    k = 2 * np.pi * np.fft.fftfreq(n)
    kz = 2 * np.pi * np.fft.rfftfreq(n)
    div = 1j * (k[:, None, None] * f[0] + k[None, :, None] * f[1] + kz[None, None, :] * f[2])
    return -np.fft.irfftn(div, s=(n, n, n), axes=(0, 1, 2))


class VNetFrameModel:
    """``predict(psi1, psi2, box_size, cosmology) -> c (K, N³, 3)`` with a styled V-net."""

    def __init__(self, net, K: int, in_scale, out_scale, features: CosmologyFeatures,
                 base: TransferModel | None = None, device: str = "cpu"):
        self.net, self.K, self.features, self.base = net, K, features, base
        self.in_scale = np.asarray(in_scale, dtype=np.float64)
        self.out_scale = np.asarray(out_scale, dtype=np.float64)
        self.device = device

    def style(self, cosmology: dict[str, float]) -> np.ndarray:
        return self.features.normalised(cosmology).astype(np.float32)

    def inputs(self, psi1, psi2, modes=None) -> np.ndarray:
        """(6, N, N, N) or (8, N, N, N) float32 normalised input channels.

        Ψ1/σ1, Ψ2/σ2 and, when ``in_scale`` has four entries, the lattice divergences
        δ1/σ_δ1, δ2/σ_δ2 (see :func:`lattice_divergence`; from ``modes``, the Fourier modes
        of Ψ1 and Ψ2, when given).
        """
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        fields = [np.moveaxis(np.asarray(p, dtype=np.float64).reshape(n, n, n, 3), -1, 0)
                  for p in (psi1, psi2)]
        if len(self.in_scale) == 4:
            if modes is None:
                modes = source_modes((psi1, psi2), n)
            fields += [divergence_from_modes(f)[None] for f in modes[:2]]
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
        modes = None
        if self.base is not None and not self.base.force_times or len(self.in_scale) == 4:
            modes = source_modes((psi1, psi2), n)  # shared by the inputs and the base
        x = torch.from_numpy(self.inputs(psi1, psi2, modes))[None].to(self.device)
        s = torch.from_numpy(self.style(cosmology))[None].to(self.device)
        self.net.eval()
        y = self.net(x, s)[0].double().cpu().numpy().reshape(self.K, 3, n, n, n)
        c = np.moveaxis(y, 1, -1).reshape(self.K, n**3, 3) * self.out_scale[:, None, None]
        if self.base is not None:
            shared = modes if not self.base.force_times else None
            c = c + self.base.predict(psi1, psi2, box_size, cosmology, modes=shared)
        return c




def save_vnet_frame(path: str | Path, basis: TimeBasis, model: VNetFrameModel,
                    meta: dict) -> Path:
    """Write a V-net frame: the network, its normalisation, the basis and the base transfer
    model (``extra`` of :func:`cocasbi.frame.checkpoint.save_model`)."""
    f = model.features
    extra = {"kind": "vnet", "K": model.K, "in_scale": model.in_scale,
             "out_scale": model.out_scale, "feature_names": list(f.names),
             "feature_centre": list(f.centre), "feature_scale": list(f.scale),
             "feature_degree": f.degree, "basis": basis.to_dict(),
             "base": model.base.to_dict() if model.base is not None else None, "meta": meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model.net, extra)
    return path


def read_vnet_frame(path: str | Path, device: str = "cpu",
                    obj: dict | None = None) -> tuple[TimeBasis, VNetFrameModel, dict]:
    """(basis, model on ``device``, meta) of a V-net frame file, every entry validated
    (one-line ValueError naming the file and the problem); ``obj``: the file's dict if it
    was read already (:func:`cocasbi.frame.checkpoint.read_checkpoint`)."""
    from cocasbi.frame.files import array, basis_from, features_from, transfer_from

    obj = read_checkpoint(path) if obj is None else obj
    where = str(path)
    net = build_model(obj, where)  # allow-listed class, validated hyper-parameters
    extra = obj.get("extra")
    try:
        if not isinstance(extra, dict) or extra.get("kind") != "vnet":
            raise ValueError("not a V-net frame (extra.kind is not 'vnet')")
        K = int(array(extra, "K", "i", 0))
        in_scale = array(extra, "in_scale", "f", 1)
        out_scale = array(extra, "out_scale", "f", 1)
        if len(in_scale) not in (2, 4) or np.any(in_scale <= 0):
            raise ValueError(f"in_scale must be 2 or 4 positive numbers, got {in_scale}")
        if out_scale.shape != (K,) or np.any(out_scale <= 0):
            raise ValueError(f"out_scale must be {K} positive numbers, got {out_scale}")
        features = features_from(extra)
        for key in ("basis", "meta"):
            if not isinstance(extra.get(key), dict):
                raise ValueError(f"entry {key!r} must be a dict")
        basis = basis_from(extra["basis"])
        if basis.K != K:
            raise ValueError(f"basis has {basis.K} functions, K = {K}")
        base = extra.get("base")
        if base is not None and not isinstance(base, dict):
            raise ValueError("entry 'base' must be a dict or None")
        base = transfer_from(base, K) if base is not None else None
        hp = net.hparams
        expected = {"in_channels": 6 if len(in_scale) == 2 else 8,
                    "out_channels": 3 * K, "style_dim": len(features.names)}
        for key, value in expected.items():
            if hp.get(key) != value:
                raise ValueError(f"network {key}={hp.get(key)!r}, the frame needs {value}")
    except ValueError as err:
        raise ValueError(f"{where}: bad V-net frame: {err}") from None
    load_weights(net, obj["state_dict"], where)
    net.to(device).eval()
    model = VNetFrameModel(net, K, in_scale, out_scale, features, base, device)
    return basis, model, extra["meta"]
