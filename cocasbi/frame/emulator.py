"""The COCA frame built from a trained model: one model evaluation per simulation.

A :class:`FrameEmulator` (loaded with :func:`load_frame`) holds a time basis b_k(a) and a model
(transfer functions or a styled V-net) that maps the simulation's LPT fields and cosmology to K
coefficient fields c_k(q). Binding it to one simulation evaluates the model **once** and gives
an :class:`EmulatedFrame`, which satisfies the :class:`cocasbi.nbody.Frame` protocol:

    p_ML(q, a) = Σ_k b_k(a) c_k(q)   [Mpc/h], (N³, 3) float64 in lattice order.

Usage::

    emu = load_frame("tiny")
    simulate(cfg.replace(simulation={"method": "coca"}), seed=7, frame=emu, forces="even:2")

(``simulate`` binds the emulator to the run's ICs; ``result.frame_seconds`` is the model time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from cocasbi.cosmology import PARAMETERS, Cosmology
from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.files import read_transfer_frame, write_transfer_frame
from cocasbi.ic import LPTFields

_CACHED_TIMES = 4  # p_ML arrays kept per bound frame
#: frames shipped in ``cocasbi/data``, loadable by name: name -> file
_SHIPPED_FILES = {"tiny": "frame_tiny.npz", "paper": "frame_paper.pt",
                  "paper-transfer": "frame_paper_transfer.npz"}
SHIPPED_FRAMES = tuple(_SHIPPED_FILES)


def cosmology_dict(cosmo: Cosmology | dict) -> dict[str, float]:
    if isinstance(cosmo, dict):
        return {k: float(v) for k, v in cosmo.items()}
    return {k: float(getattr(cosmo, k)) for k in PARAMETERS}


@dataclass
class EmulatedFrame:
    """A frame for one simulation: coefficient fields c_k (K, N³, 3) float64 [Mpc/h] and the
    time basis. ``residual_momentum(a)`` is a K-term sum; the last few times are cached (the
    stepper asks for a_i, a_{i+½} and a_{i+1} within one step), not the whole run."""

    basis: TimeBasis
    coeffs: np.ndarray
    cosmo: Cosmology
    model_seconds: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False)

    def residual_momentum(self, a: float) -> np.ndarray:
        key = float(a)
        out = self._cache.get(key)
        if out is None:
            b = self.basis.values(key, self.cosmo)
            out = np.tensordot(b, self.coeffs, axes=(0, 0))
            if len(self._cache) >= _CACHED_TIMES:
                del self._cache[next(iter(self._cache))]  # oldest first
            self._cache[key] = out
        return out

    def weighted_residual(self, times, weights) -> np.ndarray:
        """Σ_s w_s p_ML(a_s) as one K-term sum (N³, 3) float64 [Mpc/h] (the stepper collapses
        a run of force-free steps into one drift with it)."""
        b = np.atleast_2d(self.basis.values(np.asarray(times, dtype=np.float64), self.cosmo))
        return np.tensordot(b @ np.asarray(weights, dtype=np.float64), self.coeffs,
                            axes=(0, 0))


@dataclass
class FrameEmulator:
    """A trained frame model (unbound). ``kind``: ``transfer``, ``vnet`` or ``local``;
    ``model`` has ``predict(psi1, psi2, box_size, cosmology_dict) -> (K, N³, 3)``;
    ``meta``: provenance."""

    kind: str
    basis: TimeBasis
    model: object
    meta: dict = field(default_factory=dict)
    n_evaluations: int = 0

    @property
    def K(self) -> int:
        return self.basis.K

    def coefficients(self, lpt: LPTFields, cosmo: Cosmology | dict,
                     box_size: float) -> np.ndarray:
        """One model evaluation: c_k (K, N³, 3) float64 [Mpc/h]."""
        self.n_evaluations += 1
        c = self.model.predict(lpt.psi1, lpt.psi2, box_size, cosmology_dict(cosmo))
        return np.asarray(c, dtype=np.float64)

    def bind(self, lpt: LPTFields, cosmo: Cosmology, box_size: float) -> EmulatedFrame:
        """The frame of one simulation (evaluates the model once)."""
        t0 = time.perf_counter()
        coeffs = self.coefficients(lpt, cosmo, box_size)
        if not isinstance(cosmo, Cosmology):
            cosmo = Cosmology(**cosmology_dict(cosmo))
        return EmulatedFrame(self.basis, coeffs, cosmo, time.perf_counter() - t0)

    def save(self, path: str | Path) -> Path:
        """Transfer models → ``.npz`` (no torch needed); V-net and local frames → model
        file (torch)."""
        if self.kind == "transfer":
            return write_transfer_frame(path, self.basis, self.model, self.meta)
        if self.kind == "vnet":
            from cocasbi.frame.neural import save_vnet_frame

            return save_vnet_frame(path, self.basis, self.model, self.meta)
        if self.kind == "local":
            from cocasbi.frame.local import save_local_frame

            return save_local_frame(path, self.basis, self.model, self.meta)
        raise ValueError(f"unknown frame kind {self.kind!r}")


def load_frame(path: str | Path, device: str = "cpu") -> FrameEmulator:
    """Load a frame saved by :meth:`FrameEmulator.save` (``.npz`` = transfer model; V-net
    and local frames are model files that need PyTorch and run on ``device``, CPU by
    default).

    ``path`` may also name a shipped frame (:data:`SHIPPED_FRAMES`): ``"tiny"`` for
    ``tiny.yaml``; for ``paper.yaml`` over the default prior ``"paper"`` (the force-input
    transfer frame plus the local network, needs PyTorch) and ``"paper-transfer"`` (the
    force-input transfer frame alone, numpy only). The file is
    validated (:mod:`cocasbi.frame.files`, :mod:`cocasbi.frame.checkpoint`): anything but a
    well-formed frame is a one-line ValueError, and nothing in it is executed.
    """
    if str(path) in SHIPPED_FRAMES:
        path = shipped_frame_path(str(path))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame file not found: {path}")
    if path.suffix == ".npz":
        basis, model, meta = read_transfer_frame(path)
        return FrameEmulator("transfer", basis, model, meta)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(f"{path}: this frame holds a neural network and needs PyTorch "
                          "(pip install 'cocasbi[ml]'); transfer frames (.npz, e.g. "
                          "'paper-transfer') do not") from None
    from cocasbi.frame.checkpoint import read_checkpoint

    obj = read_checkpoint(path)
    extra = obj.get("extra")
    if isinstance(extra, dict) and extra.get("kind") == "local":
        from cocasbi.frame.local import local_frame_from

        basis, model, meta = local_frame_from(obj, str(path), device)
        return FrameEmulator("local", basis, model, meta)
    from cocasbi.frame.neural import read_vnet_frame

    basis, model, meta = read_vnet_frame(path, device, obj)
    return FrameEmulator("vnet", basis, model, meta)


def shipped_frame_path(name: str = "tiny") -> Path:
    """Path of a pre-trained frame shipped in ``cocasbi/data``."""
    if name not in SHIPPED_FRAMES:
        raise ValueError(f"no shipped frame {name!r}; choose from {SHIPPED_FRAMES}")
    return Path(str(resources.files("cocasbi") / "data" / _SHIPPED_FILES[name]))
