"""Transfer frame for the large scales plus a small local network for the small scales.

The force-input transfer frame (:class:`cocasbi.frame.transfer.TransferModel` with
``force_times``) is global: its transfer functions see every Fourier mode, but it is linear
in its inputs, so it misses the nonlinear small-scale part of the COLA residual. A
:class:`LocalNet` adds a correction Δc_k to its coefficient fields from the fields in a
neighbourhood of each lattice cell (receptive radius ``sum(dilations)`` cells):

    c_k = c_k^transfer + s · LocalNet(inputs)_k,

inputs (one channel each, normalised by ``in_scale``, float32): δ1 = −∇·Ψ1 (the linear
density), δ2 = −∇·Ψ2, for each force time of the transfer model the PM force at the 2LPT
positions (3 channels) and its divergence, the 3K channels of the transfer prediction itself,
and the normalised cosmology x = (θ − centre)/scale as constant channels. The output layer
starts at zero, so an untrained network *is* the transfer frame.

The network is periodic without padding every layer: the input is padded **once**
circularly by the receptive radius and every 3³ convolution is unpadded (each shrinks the
grid by twice its dilation), so the output has the lattice's size, and the network commutes
with periodic lattice shifts (tested). Training on sub-volumes cuts the padded crop out of
the periodic box, so no cell ever sees a wrong neighbour.

The network acts per lattice cell, so a frame only applies to the particle spacing
(box/N [Mpc/h]) it was trained at; :meth:`LocalFrameModel.predict` refuses others.
Frame files are model files of :mod:`cocasbi.frame.checkpoint` (``torch.load`` with
``weights_only=True``, class from the allow-list); ``extra.kind`` is ``"local"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.localnet import LocalNet
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel, source_modes

__all__ = ["LocalFrameModel", "LocalNet", "field_inputs", "local_frame_from", "local_inputs",
           "save_local_frame"]

#: relative tolerance on the particle spacing box/N against the training spacing
SPACING_RTOL = 0.01


def to_channels(c: np.ndarray, n: int) -> np.ndarray:
    """Coefficient fields (K, N³, 3) in lattice order → (3K, N, N, N) channels."""
    K = c.shape[0]
    return np.moveaxis(np.asarray(c).reshape(K, n, n, n, 3), -1, 1).reshape(3 * K, n, n, n)


def from_channels(y: np.ndarray, K: int) -> np.ndarray:
    """(3K, N, N, N) channels → coefficient fields (K, N³, 3) (inverse of to_channels)."""
    n = y.shape[-1]
    return np.moveaxis(np.asarray(y).reshape(K, 3, n, n, n), 1, -1).reshape(K, n**3, 3)


def field_inputs(psi1, forces, base_coeffs, modes) -> np.ndarray:
    """The unnormalised field channels (C_f, N, N, N) float32: δ1, δ2, per force (F_x, F_y,
    F_z, −∇·F), then the 3K channels of the transfer prediction ``base_coeffs`` (K, N³, 3).
    Divergences per lattice cell (:func:`cocasbi.frame.neural.lattice_divergence`), from
    ``modes`` (:func:`cocasbi.frame.transfer.source_modes` of Ψ1, Ψ2 and the forces)."""
    from cocasbi.frame.neural import divergence_from_modes

    n = round((np.asarray(psi1).size / 3) ** (1 / 3))
    div = [divergence_from_modes(f)[None] for f in modes]
    out = div[:2]
    for f, d in zip(forces, div[2:], strict=True):
        out += [np.moveaxis(np.asarray(f, dtype=np.float64).reshape(n, n, n, 3), -1, 0), d]
    out.append(to_channels(base_coeffs, n))
    return np.concatenate(out).astype(np.float32)


def local_inputs(base: TransferModel, psi1, psi2, box_size: float,
                 cosmology: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The transfer prediction c^transfer (K, N³, 3) float64 [Mpc/h] and the unnormalised
    field channels (:func:`field_inputs`) of one run: the model's forces at the 2LPT positions
    and the Fourier modes of every source are computed once and shared by both."""
    n = round((np.asarray(psi1).size / 3) ** (1 / 3))
    forces = base.forces(psi1, psi2, box_size, cosmology)
    modes = source_modes((psi1, psi2, *forces), n)
    c = base.predict(psi1, psi2, box_size, cosmology, modes=modes)
    return c, field_inputs(psi1, forces, c, modes)


class LocalFrameModel:
    """``predict(psi1, psi2, box_size, cosmology) -> c (K, N³, 3)``: transfer frame + local
    network correction.

    base: the transfer model (its force inputs are computed once and shared); in_scale (C_f,)
    float64: scales of the field channels; out_scale: the common scale s [Mpc/h] of the
    correction; features: the cosmology normalisation (degree-1 monomials are the constant
    channels); spacing: the training particle spacing box/N [Mpc/h].
    """

    def __init__(self, net: LocalNet, base: TransferModel, in_scale, out_scale: float,
                 features: CosmologyFeatures, spacing: float, device: str = "cpu"):
        self.net, self.base, self.features = net, base, features
        self.in_scale = np.asarray(in_scale, dtype=np.float64)
        self.out_scale = float(out_scale)
        self.spacing = float(spacing)
        self.device = device
        n_fields = 2 + 4 * len(base.force_times) + 3 * base.K
        if self.in_scale.shape != (n_fields,):
            raise ValueError(f"in_scale has shape {self.in_scale.shape}, expected ({n_fields},)")
        expected = {"in_channels": n_fields + len(features.names),
                    "out_channels": 3 * base.K}
        for key, value in expected.items():
            if net.hparams[key] != value:
                raise ValueError(f"network {key}={net.hparams[key]}, the frame needs {value}")

    @property
    def K(self) -> int:
        return self.base.K

    def cosmology_channels(self, cosmology: dict[str, float]) -> np.ndarray:
        """Normalised (θ − centre)/scale (F,) float32 of the frame's parameters."""
        return self.features.normalised(cosmology).astype(np.float32)

    def network_input(self, fields: np.ndarray, cosmology: dict[str, float]) -> torch.Tensor:
        """(1, C_in, N, N, N) float32: normalised field channels and the cosmology channels."""
        n = fields.shape[-1]
        x = fields / self.in_scale[:, None, None, None].astype(np.float32)
        cos = np.broadcast_to(self.cosmology_channels(cosmology)[:, None, None, None],
                              (len(self.features.names), n, n, n))
        return torch.from_numpy(np.concatenate([x, cos]).astype(np.float32))[None]

    def check_spacing(self, n: int, box_size: float) -> None:
        spacing = box_size / n
        if abs(spacing / self.spacing - 1) > SPACING_RTOL:
            raise ValueError(f"the local frame was trained at a particle spacing of "
                             f"{self.spacing:g} Mpc/h, this run has {spacing:g} "
                             f"({box_size:g} Mpc/h / {n}); retrain it for this resolution")

    @torch.no_grad()
    def predict(self, psi1, psi2, box_size: float, cosmology: dict[str, float]) -> np.ndarray:
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        self.check_spacing(n, box_size)
        c, fields = local_inputs(self.base, psi1, psi2, box_size, cosmology)
        x = self.network_input(fields, cosmology)
        self.net.eval()
        y = self.net.periodic(x.to(self.device))[0].double().cpu().numpy()
        return c + self.out_scale * from_channels(y, self.K)


def save_local_frame(path: str | Path, basis: TimeBasis, model: LocalFrameModel,
                     meta: dict) -> Path:
    """Write a local frame: network, normalisation, basis and transfer model
    (``extra`` of :func:`cocasbi.frame.checkpoint.save_model`)."""
    from cocasbi.frame.checkpoint import save_model

    f = model.features
    extra = {"kind": "local", "K": model.K, "in_scale": model.in_scale,
             "out_scale": model.out_scale, "spacing": model.spacing,
             "feature_names": list(f.names), "feature_centre": list(f.centre),
             "feature_scale": list(f.scale), "feature_degree": f.degree,
             "basis": basis.to_dict(), "base": model.base.to_dict(), "meta": meta}
    path = Path(path)
    save_model(path, model.net, extra)
    return path


def local_frame_from(obj: dict, where: str,
                     device: str = "cpu") -> tuple[TimeBasis, LocalFrameModel, dict]:
    """(basis, model on ``device``, meta) from the dict of a local frame file (read by
    :func:`cocasbi.frame.checkpoint.read_checkpoint`), every entry validated."""
    from cocasbi.frame.checkpoint import build_model, load_weights
    from cocasbi.frame.files import array, basis_from, features_from, transfer_from

    net = build_model(obj, where)
    if not isinstance(net, LocalNet):
        raise ValueError(f"{where}: bad local frame: network is a {type(net).__name__}, "
                         "not a LocalNet")
    extra = obj.get("extra")
    try:
        if not isinstance(extra, dict) or extra.get("kind") != "local":
            raise ValueError("not a local frame (extra.kind is not 'local')")
        K = int(array(extra, "K", "i", 0))
        in_scale = array(extra, "in_scale", "f", 1)
        out_scale = float(array(extra, "out_scale", "f", 0))
        spacing = float(array(extra, "spacing", "f", 0))
        if np.any(in_scale <= 0) or out_scale <= 0 or spacing <= 0:
            raise ValueError("in_scale, out_scale and spacing must be positive")
        features = features_from(extra)
        for key in ("basis", "base", "meta"):
            if not isinstance(extra.get(key), dict):
                raise ValueError(f"entry {key!r} must be a dict")
        basis = basis_from(extra["basis"])
        if basis.K != K:
            raise ValueError(f"basis has {basis.K} functions, K = {K}")
        base = transfer_from(extra["base"], K)
        model = LocalFrameModel(net, base, in_scale, out_scale, features, spacing, device)
    except ValueError as err:
        raise ValueError(f"{where}: bad local frame: {err}") from None
    load_weights(net, obj["state_dict"], where)
    net.to(device).eval()
    return basis, model, extra["meta"]
