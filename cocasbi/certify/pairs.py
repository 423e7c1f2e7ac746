"""Paired runs: the configuration under test and its reference from the same initial conditions.

:class:`PairTask` is a campaign producer (``kind = "pairs"``): called with θ and a seed it runs
the reference, then the run under test on the same LPT fields, and returns every paired metric
of :func:`cocasbi.stats.metrics.paired_metrics` plus the summary vectors of both runs (for the
Fisher bias). :func:`run_pairs` loops over a design in process with a progress bar.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from cocasbi import __version__
from cocasbi.config import Config
from cocasbi.forward import ForwardModel
from cocasbi.seeds import as_seed_sequence, describe
from cocasbi.simulation import simulate
from cocasbi.stats.metrics import paired_metrics


class PairTask:
    """θ, seed → paired metrics of the run under test against the reference.

    Parameters
    ----------
    candidate, reference : ForwardModel
        The run under test and the reference, on the same box, particles and mesh (their
        ``summarize`` gives the summary vectors ``x`` and ``x_ref``).
    kmax : float
        Upper edge of the P(k) bins [h/Mpc].
    dk, kmin : float, optional
        P(k) bin width and first edge [h/Mpc].
    triangles : (n, 3) array, optional
        Bispectrum triangles [h/Mpc]; ``bk_dk`` their shell width [h/Mpc].
    velocities : bool
        Also compare peculiar velocities.
    """

    kind = "pairs"

    def __init__(self, candidate: ForwardModel, reference: ForwardModel, *, kmax: float,
                 dk: float | None = None, kmin: float | None = None, triangles=None,
                 bk_dk: float | None = None, velocities: bool = True):
        a, b = candidate.config.simulation, reference.config.simulation
        for key in ("box_size", "n_particles", "n_mesh", "a_init", "a_final", "lpt_order"):
            if getattr(a, key) != getattr(b, key):
                raise ValueError(f"run under test and reference differ in {key}: "
                                 f"{getattr(a, key)} vs {getattr(b, key)}")
        if candidate.parameters != reference.parameters:
            raise ValueError("run under test and reference vary different parameters")
        self.candidate, self.reference = candidate, reference
        self.kmax, self.dk, self.kmin = float(kmax), dk, kmin
        self.triangles = None if triangles is None else np.asarray(triangles, dtype=np.float64)
        self.bk_dk = bk_dk
        self.velocities = velocities

    def provenance(self) -> dict:
        """JSON-serialisable description of both runs and the metric settings."""
        return {"producer": "cocasbi.certify.PairTask", "cocasbi_version": __version__,
                "candidate": self.candidate.provenance(),
                "reference": self.reference.provenance(),
                "kmax": self.kmax, "dk": self.dk, "kmin": self.kmin,
                "triangles": None if self.triangles is None else self.triangles.tolist(),
                "bk_dk": self.bk_dk, "velocities": self.velocities}

    def __call__(self, theta, seed) -> dict[str, np.ndarray]:
        """Run the pair for θ (d,) with initial phases from ``seed`` (SeedSequence or int)."""
        seed = as_seed_sequence(seed)
        t0 = time.perf_counter()
        ref = self.reference.simulate(theta, seed)
        t1 = time.perf_counter()
        run = simulate(self.candidate.config_for(theta), seed=seed, frame=self.candidate.frame,
                       forces=self.candidate.force_mask, lpt=ref.lpt)
        t2 = time.perf_counter()
        sim = self.candidate.config.simulation
        v = run.final.velocities() if self.velocities else None
        v_ref = ref.final.velocities() if self.velocities else None
        out = paired_metrics(run.final.positions, ref.final.positions, sim.box_size,
                             sim.n_mesh, v=v, v_ref=v_ref, dk=self.dk, kmin=self.kmin,
                             kmax=self.kmax, triangles=self.triangles, bk_dk=self.bk_dk,
                             threads=sim.threads)
        out["x"] = self.candidate.summarize(run.final.positions).astype(np.float64)
        out["x_ref"] = self.reference.summarize(ref.final.positions).astype(np.float64)
        out["seconds"] = np.float64(t2 - t1)
        out["seconds_ref"] = np.float64(t1 - t0)
        out["n_forces"] = np.int64(run.n_force_evaluations)
        out["n_forces_ref"] = np.int64(ref.n_force_evaluations)
        return out


def make_models(base: Config, candidate_spec, reference_spec, parameters, summaries,
                frame=None, **binning) -> tuple[ForwardModel, ForwardModel]:
    """Forward models of the run under test and the reference (specs: :class:`RunSpec`).

    ``frame`` overrides the candidate's frame (an object: an emulator or a fixed frame);
    ``binning`` (kmin, kmax, dk, bk_bins [h/Mpc]) goes to both models.
    """
    cand_cfg = candidate_spec.simulation_config(base)
    ref_cfg = reference_spec.simulation_config(base)
    cand_frame = frame if frame is not None else candidate_spec.frame
    candidate = ForwardModel(cand_cfg, frame=cand_frame, forces=candidate_spec.forces,
                             parameters=parameters, summaries=summaries, **binning)
    reference = ForwardModel(ref_cfg, parameters=parameters, summaries=summaries, **binning)
    return candidate, reference


def run_pairs(task: PairTask, thetas, seeds, progress: bool = True) -> list[dict]:
    """Run ``task`` for every θ (rows of ``thetas``) and every seed, in process.

    Returns one dict per pair (θ-major order) with the task's arrays and ``theta``, ``seed``
    (its :func:`~cocasbi.seeds.describe` form).
    """
    thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    jobs = [(i, theta, seed) for i, theta in enumerate(thetas) for seed in seeds]
    results = []
    for i, theta, seed in tqdm(jobs, desc="pairs", unit="pair", disable=not progress):
        out = task(theta, seed)
        out["theta"] = theta.copy()
        out["design_index"] = np.int64(i)
        out["seed"] = describe(seed)
        results.append(out)
    return results
