"""Run a certification: design, paired runs, convergence ladder, Fisher bias, checks, report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cocasbi.certify.config import CertifyConfig
from cocasbi.certify.convergence import (
    LADDER_METRICS,
    THRESHOLD_METRICS,
    default_levels,
    forces_to_pass,
    is_converging,
    worst,
)
from cocasbi.certify.fisher import (
    finite_difference_jacobian,
    fisher_bias,
    hartlap_precision,
    sample_summaries,
)
from cocasbi.certify.pairs import PairTask, make_models, run_pairs
from cocasbi.certify.report import CertificationReport, Check, plot_report
from cocasbi.prior import BoxPrior
from cocasbi.seeds import Stream, design_seed, stream_seed
from cocasbi.simulation import simulate
from cocasbi.stats.bispectrum import triangle_bins
from cocasbi.stats.metrics import paired_metrics

#: Offsets of the held-out seed indices (stream CERTIFY) of the Fisher runs.
COVARIANCE_SEEDS, DERIVATIVE_SEEDS = 100_000, 200_000


def design(prior: BoxPrior, corners: bool, n_interior: int, master_seed: int) -> np.ndarray:
    """θ of a certification: the prior centre (the fiducial point, first), the corners, and
    ``n_interior`` Latin-hypercube points inside the box (drawn from ``design_seed``)."""
    rows = [prior.center[None]]
    if corners:
        rows.append(prior.corners())
    if n_interior:
        rng = np.random.default_rng(design_seed(master_seed))
        rows.append(prior.design(n_interior, rng, "latin_hypercube"))
    return np.concatenate(rows)


def certification_seeds(master_seed: int, n: int, offset: int = 0) -> list:
    """Held-out seeds ``stream_seed(master_seed, Stream.CERTIFY, offset + j)``, j < n."""
    return [stream_seed(master_seed, Stream.CERTIFY, offset + j) for j in range(n)]


def _summarise(pairs: list[dict], names) -> dict:
    """Mean and worst (largest |value|) over pairs of each per-bin metric; scalars too."""
    out = {}
    for name in names:
        stack = np.stack([np.asarray(p[name], dtype=np.float64) for p in pairs])
        out[name + "_mean"] = np.mean(stack, axis=0).tolist()
        out[name + "_worst"] = np.max(np.abs(stack), axis=0).tolist()
    for name in ("rms_dx", "rms_dv"):
        values = np.array([float(p[name]) for p in pairs])
        out[name + "_mean"] = float(np.mean(values))
        out[name + "_worst"] = float(np.max(values))
    return out


def _worst_check(name, pairs, sel, threshold, design_thetas, where_k, unit="") -> Check:
    """The largest |metric| over pairs and selected bins against its threshold."""
    stack = np.abs(np.stack([np.asarray(p[name], dtype=np.float64)[sel] for p in pairs]))
    if stack.size == 0 or not np.any(np.isfinite(stack)):
        return Check(name, float("nan"), threshold, False, "no finite value")
    i, j = np.unravel_index(np.nanargmax(stack), stack.shape)
    theta = design_thetas[int(pairs[i]["design_index"])]
    value = float(stack[i, j])
    detail = (f"θ = ({', '.join(f'{t:.3g}' for t in theta)}), {where_k(j)}"
              + (f" ({unit})" if unit else ""))
    return Check(name, value, threshold, bool(np.all(stack[np.isfinite(stack)] < threshold)
                                              and np.all(np.isfinite(stack))), detail)


def _convergence(cfg: CertifyConfig, candidate, reference, theta, seed, kmax, progress):
    """Errors at θ for a ladder of steps (PM, COLA) or forces (COCA) against one reference."""
    spec = cfg.under_test
    base = candidate.config
    sim = base.simulation
    n_max = int(len(candidate.force_mask) if sim.final_kick else len(candidate.force_mask) - 1)
    levels = cfg.convergence.levels or default_levels(
        spec.method, sim.n_steps, candidate.n_force_evaluations, n_max)
    ref = reference.simulate(theta, seed)
    table = {name: [] for name in LADDER_METRICS}
    n_forces = []
    for level in tqdm(levels, desc="convergence", unit="level", disable=not progress):
        if spec.method == "coca":
            run = simulate(candidate.config_for(theta), seed=seed, frame=candidate.frame,
                           forces=f"even:{level}", lpt=ref.lpt)
        else:
            run = simulate(candidate.config_for(theta).replace(simulation={"n_steps": level}),
                           seed=seed, lpt=ref.lpt)
        m = paired_metrics(run.final.positions, ref.final.positions, sim.box_size, sim.n_mesh,
                           dk=cfg.metrics.dk, kmin=cfg.metrics.kmin, kmax=kmax,
                           threads=sim.threads)
        for name, value in worst(m, kmax).items():
            table[name].append(value)
        n_forces.append(run.n_force_evaluations)
    th = cfg.thresholds
    floors = {"rms_dx": 1e-3 * sim.box_size / sim.n_mesh, "pk_ratio": 0.1 * th.pk_ratio,
              "one_minus_r2": 0.1 * th.one_minus_r2}
    converging = {name: is_converging(table[name], cfg.convergence.tolerance, floors[name])
                  for name in LADDER_METRICS}
    out = {"unit": "forces (even:K)" if spec.method == "coca" else "steps",
           "levels": list(levels), "n_forces": n_forces, **table, "floors": floors,
           "converging": converging, "theta": np.asarray(theta).tolist()}
    out["forces_to_pass"] = forces_to_pass(
        out, {name: getattr(th, name) for name in THRESHOLD_METRICS})
    return out


def convergence_ladder(cfg: CertifyConfig, theta, seed=None, *, frame=None,
                       progress: bool = True) -> dict:
    """The convergence ladder of ``cfg`` at any θ (inside the prior or not), with the
    smallest number of force evaluations at which the field-level thresholds pass
    (``forces_to_pass``). ``seed`` defaults to the first held-out certification seed."""
    task, _, kmax = build_task(cfg, frame)
    if seed is None:
        seed = certification_seeds(cfg.design.master_seed, 1)[0]
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (len(task.candidate.parameters),):
        raise ValueError(f"theta must have {len(task.candidate.parameters)} values "
                         f"({', '.join(task.candidate.parameters)}), got shape {theta.shape}")
    return _convergence(cfg, task.candidate, task.reference, theta, seed, kmax, progress)


def _fisher(cfg: CertifyConfig, candidate, theta0, pairs, prior: BoxPrior, progress):
    """Parameter bias of the mean summary error at the fiducial θ (first design point)."""
    spec = cfg.fisher
    master = cfg.design.master_seed
    fiducial = [p for p in pairs if int(p["design_index"]) == 0]
    delta_x = np.mean([np.asarray(p["x"]) - np.asarray(p["x_ref"]) for p in fiducial], axis=0)
    samples = sample_summaries(candidate, theta0,
                               certification_seeds(master, spec.n_covariance, COVARIANCE_SEEDS),
                               progress=progress)
    precision = hartlap_precision(samples)
    jac = finite_difference_jacobian(
        candidate, theta0, spec.step * prior.width,
        certification_seeds(master, spec.n_derivative, DERIVATIVE_SEEDS), progress=progress)
    out = fisher_bias(jac, precision, delta_x)
    return {"bias": out["bias"].tolist(), "sigma": out["sigma"].tolist(),
            "bias_sigma": out["bias_sigma"].tolist(), "fisher": out["fisher"].tolist(),
            "delta_x": delta_x.tolist(), "names": list(candidate.names),
            "n_covariance": spec.n_covariance, "n_derivative": spec.n_derivative,
            "step": spec.step, "theta": np.asarray(theta0).tolist()}


def build_task(cfg: CertifyConfig, frame=None):
    """The :class:`PairTask` of a certification, its bispectrum triangles and k_max [h/Mpc]."""
    base = cfg.simulation_config()
    prior = cfg.prior_box()
    kmax = cfg.kmax(base)
    kf = 2 * np.pi / base.simulation.box_size
    bk_kmin, bk_kmax, bk_dk = cfg.metrics.bk_bins or (kf, kmax, 2 * kf)
    triangles = triangle_bins(bk_kmin, bk_kmax, bk_dk)
    candidate, reference = make_models(
        base, cfg.under_test, cfg.reference, prior.names, cfg.fisher.summaries, frame=frame,
        kmin=cfg.metrics.kmin, kmax=kmax, dk=cfg.metrics.dk, bk_bins=(bk_kmin, bk_kmax, bk_dk))
    task = PairTask(candidate, reference, kmax=kmax, dk=cfg.metrics.dk, kmin=cfg.metrics.kmin,
                    triangles=triangles if len(triangles) else None, bk_dk=bk_dk,
                    velocities=cfg.metrics.velocities)
    return task, triangles, kmax


def certify(cfg: CertifyConfig, *, frame=None, out_dir=None, progress: bool = True,
            pair_runner=None) -> CertificationReport:
    """Certify ``cfg.under_test`` against ``cfg.reference``; write the report to ``out_dir``.

    ``frame`` overrides the COCA frame of the run under test (an emulator or fixed frame
    object); ``pair_runner(task, thetas, seeds) -> list[dict]`` replaces the in-process loop
    :func:`~cocasbi.certify.pairs.run_pairs`; with ``farm.enabled`` the pairs run as a campaign
    on a Dask farm (:mod:`cocasbi.certify.farm`) in ``farm.directory`` (default
    ``<out_dir>/pairs``), which resumes if interrupted.
    """
    t_start = time.perf_counter()
    task, triangles, kmax = build_task(cfg, frame)
    candidate, reference = task.candidate, task.reference
    prior = cfg.prior_box()
    thetas = design(prior, cfg.design.corners, cfg.design.n_interior, cfg.design.master_seed)
    seeds = certification_seeds(cfg.design.master_seed, cfg.design.n_seeds)
    runner = pair_runner
    if runner is None and cfg.farm.enabled:
        from cocasbi.certify.farm import campaign_runner

        directory = cfg.farm.directory or Path(out_dir or cfg.output.directory) / "pairs"
        runner = campaign_runner(cfg, directory, workers=cfg.farm.workers,
                                 threads_per_worker=cfg.farm.threads_per_worker,
                                 progress=progress)
    runner = runner or (lambda t, th, s: run_pairs(t, th, s, progress=progress))
    pairs = runner(task, thetas, seeds)
    t_pairs = time.perf_counter()

    first = pairs[0]
    k = np.asarray(first["k"])
    sel = (k <= kmax) & (np.asarray(first["n_modes"]) > 0)
    th = cfg.thresholds
    per_bin = ["pk_ratio", "one_minus_r2", "pk_ratio_cv", "one_minus_r2_cv"]
    if task.triangles is not None:
        per_bin += ["bk_ratio", "bk_ratio_cv"]
    summary = _summarise(pairs, per_bin)
    kept = np.flatnonzero(sel)
    checks = [
        _worst_check("pk_ratio", pairs, sel, th.pk_ratio, thetas,
                     lambda j: f"k = {k[kept[j]]:.3f} h/Mpc"),
        _worst_check("one_minus_r2", pairs, sel, th.one_minus_r2, thetas,
                     lambda j: f"k = {k[kept[j]]:.3f} h/Mpc"),
    ]
    if task.triangles is not None:
        tri_sel = np.ones(len(triangles), dtype=bool)
        checks.append(_worst_check(
            "bk_ratio", pairs, tri_sel, th.bk_ratio, thetas,
            lambda j: "k1,k2,k3 = " + ",".join(f"{x:.3f}" for x in triangles[j]) + " h/Mpc"))

    convergence = None
    if cfg.convergence.enabled:
        convergence = _convergence(cfg, candidate, reference, thetas[0], seeds[0], kmax,
                                   progress)
        bad = [n for n, ok in convergence["converging"].items() if not ok]
        checks.append(Check("convergence", float(len(bad)), 0.5, not bad,
                            "not converging: " + ", ".join(bad) if bad else
                            f"errors fall over {convergence['unit']} {convergence['levels']}"))
        need = convergence["forces_to_pass"]
        print_need = ("none within the ladder" if need["n_forces"] is None else
                      f"{need['n_forces']} forces ({convergence['unit']} {need['level']})")
        checks[-1].detail += f"; thresholds pass from {print_need}"
    t_conv = time.perf_counter()

    fisher = None
    if cfg.fisher.enabled:
        fisher = _fisher(cfg, candidate, thetas[0], pairs, prior, progress)
        b = np.abs(np.asarray(fisher["bias_sigma"]))
        i = int(np.argmax(b))
        checks.append(Check("parameter_bias", float(b[i]), th.parameter_bias,
                            bool(np.all(b < th.parameter_bias)),
                            f"{prior.names[i]}: δθ = {fisher['bias'][i]:+.3g} "
                            f"(σ = {fisher['sigma'][i]:.3g}) at the prior centre"))
    npe = None
    if cfg.npe.enabled:
        from cocasbi.certify.npe import npe_check

        npe = npe_check(cfg, candidate, pairs, prior, progress)
        shift = np.abs(np.asarray(npe["shift"]))
        i, j = np.unravel_index(np.argmax(shift), shift.shape)
        theta = thetas[int(pairs[i]["design_index"])]
        checks.append(Check("posterior_shift", float(shift[i, j]), th.posterior_shift,
                            bool(np.all(shift < th.posterior_shift)),
                            f"{prior.names[j]} at θ = ({', '.join(f'{t:.3g}' for t in theta)})"
                            f"; coverage 68/95 %: {npe['coverage']}"))
        mis = npe["misspecification"]
        checks.append(Check("misspecification", mis["p_value"], mis["alpha"],
                            not mis["flagged"],
                            f"MMD p-value of the reference summaries against the training set "
                            f"(pass if >= α); {mis['fraction_flagged']:.0%} of the pairs "
                            f"flagged alone"))
    t_end = time.perf_counter()

    keep_keys = ("rms_dx", "rms_dv", "pk_ratio", "one_minus_r2", "pk_ratio_cv",
                 "one_minus_r2_cv", "bk_ratio", "bk_ratio_cv", "theta", "seed", "seconds",
                 "seconds_ref", "n_forces", "n_forces_ref", "design_index")
    pair_records = [{key: (np.asarray(p[key]).tolist() if key != "seed" else p[key])
                     for key in keep_keys if key in p} for p in pairs]
    report = CertificationReport(
        name=cfg.name, under_test=cfg.under_test.name(candidate.config),
        reference=cfg.reference.name(reference.config),
        passed=all(c.passed for c in checks), checks=checks, parameters=list(prior.names),
        kmax=float(kmax), k=k.tolist(), n_modes=np.asarray(first["n_modes"]).tolist(),
        sigma_cv=np.asarray(first["sigma_cv"]).tolist(), triangles=triangles.tolist(),
        design=thetas.tolist(), pairs=pair_records, summary=summary,
        convergence=convergence, fisher=fisher, npe=npe,
        timing={"pairs_s": t_pairs - t_start, "convergence_s": t_conv - t_pairs,
                "fisher_s": t_end - t_conv, "total_s": t_end - t_start,
                "mean_seconds": float(np.mean([float(p["seconds"]) for p in pairs])),
                "mean_seconds_ref": float(np.mean([float(p["seconds_ref"]) for p in pairs]))},
        config=cfg.model_dump(mode="json"), provenance=task.provenance())
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: CertificationReport, out_dir) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and the plots of :func:`plot_report` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [report.save(out_dir / f"{report.name}.json")]
    md = out_dir / f"{report.name}.md"
    md.write_text(report.markdown())
    files.append(md)
    files += plot_report(report, out_dir)
    return files
