"""The main job: simulations → NPE → mock observation → posterior → diagnostics → report.

Stages (each timed; a finished stage is reused by the next run, so the job resumes):

1. **simulate**: plan and run the campaign in ``<directory>/campaign`` (resumed by the
   campaign machinery), or simulate the Gaussian-field model in process
   (``simulations.npz``); the last ``n_test`` rows are held out for diagnostics.
2. **observe**: the mock x_o from a reference run (PM with more steps, or the real-field path
   of the Gaussian field) at the configured θ with the held-out observation seed.
3. **train**: NPE on the training rows (``estimator.pt``, reused when its fingerprint - the
   configuration and the data - is unchanged); optional sequential rounds simulate at
   posterior draws given x_o.
4. **sample**: posterior samples, moments, credible intervals, truth percentiles and the
   corner plot.
5. **diagnose**: SBC, coverage and TARP on the held-out rows, with a verdict.
6. **report**: ``report.md`` and ``summary.json``.

This is the only inference module that imports :mod:`cocasbi.campaign`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cocasbi.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cocasbi.inference.config import PipelineConfig
from cocasbi.inference.data import TrainingData, from_model, training_set
from cocasbi.inference.diagnostics import plot_diagnostics, run_diagnostics, write_report
from cocasbi.inference.estimator import train_estimators
from cocasbi.inference.gaussian_field import simulate_prior
from cocasbi.inference.observation import (
    Observation,
    check_layout,
    load_observation,
    mock_observation,
    reference_model,
    save_observation,
)
from cocasbi.inference.posterior import corner_plot, sample_posterior, summarize
from cocasbi.io.atomic import atomic_path
from cocasbi.seeds import (
    Stream,
    derived_master_seed,
    simulation_seed,
    stream_seed,
)


@dataclass
class PipelineResult:
    """Paths and numbers of one pipeline run."""

    directory: Path
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    verdict: str | None = None


class _Stages:
    """Times stages and says which were reused."""

    def __init__(self, echo: Callable[[str], None]):
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []
        self.echo = echo

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out, reused = fn(*args, **kwargs)
        self.timings[name] = time.perf_counter() - t0
        if reused:
            self.reused.append(name)
        self.echo(f"[{name}] {'reused' if reused else 'done'} in {self.timings[name]:.1f} s")
        return out


# ------------------------------------------------------------------------------ simulations
def _campaign_config(cfg: PipelineConfig, base: Path | None):
    from cocasbi.campaign import campaign_config_from_dict, load_campaign_config

    if isinstance(cfg.campaign, dict):
        return campaign_config_from_dict(cfg.campaign, source="inference campaign", base=base)
    return load_campaign_config(cfg.campaign)


def _simulate_campaign(cfg: PipelineConfig, directory: Path, progress: bool, base):
    from cocasbi.campaign import plan_campaign, run_campaign

    ccfg = _campaign_config(cfg, base)
    store = plan_campaign(ccfg, directory / "campaign")
    if _finished(store.merged_path):
        return training_set(store.merged_path, min_rows=2), True
    run_campaign(store.directory, progress=progress)  # resumes; retries crashed runs
    return training_set(store.merged_path, min_rows=2), False


def _finished(merged: Path) -> bool:
    """A merged campaign with no simulation left to run (pending, crashed or corrupt)."""
    from cocasbi.io.campaign_store import load_campaign

    if not merged.is_file():
        return False
    status = load_campaign(merged).status
    return not np.isin(status, ("pending", "crashed", "corrupt")).any()


def _simulate_field(cfg: PipelineConfig, directory: Path, progress: bool):
    spec = cfg.gaussian_field
    model = spec.model("exact")
    path = directory / "simulations.npz"
    key = _digest({"spec": spec.model_dump(mode="json"), "seed": cfg.master_seed})
    if path.is_file():
        with np.load(path) as f:
            if str(f["key"]) == key:
                return from_model(model, f["theta"], f["x"]), True
    theta, x = simulate_prior(model, spec.n_simulations, cfg.master_seed, progress)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, theta=theta, x=x, key=key)
    return from_model(model, theta, x), False


def split_held_out(data: TrainingData, n_test: int, min_train: int):
    """(train, held-out): the rows of the last ``n_test`` plan indices are held out (fewer
    held-out rows when some of those simulations failed)."""
    cut = data.report.n_total - n_test
    test = np.flatnonzero(data.index >= cut)
    train = np.flatnonzero(data.index < cut)
    if len(train) < min_train:
        raise ValueError(f"only {len(train)} usable training simulations after holding out "
                         f"{n_test}, need at least {min_train} ({data.report})")
    return data.subset(train), data.subset(test)


# ------------------------------------------------------------------------------ observation
def _check_truth(cfg: PipelineConfig, base) -> None:
    """Fail before any simulation when the mock's θ misses a parameter or leaves the prior."""
    if cfg.observation.file is not None:
        return
    if cfg.gaussian_field is not None:
        prior = cfg.gaussian_field.model().prior
    else:
        prior = _campaign_config(cfg, base).box_prior()
    theta = cfg.observation.theta
    if set(theta) != set(prior.names):
        raise ValueError(f"observation θ names {sorted(theta)} must be the parameters "
                         f"{list(prior.names)}")
    prior.check([theta[p] for p in prior.names])


def _reference(cfg: PipelineConfig, base):
    obs = cfg.observation
    if cfg.gaussian_field is not None:
        return cfg.gaussian_field.model(obs.method)
    return reference_model(_campaign_config(cfg, base).forward, method=obs.method,
                           n_steps=obs.n_steps)


def _observe(cfg: PipelineConfig, directory: Path, data: TrainingData, base):
    obs_cfg = cfg.observation
    if obs_cfg.file is not None:
        return load_observation(obs_cfg.file), True
    path = directory / "observation.h5"
    missing = sorted(set(data.parameters) - set(obs_cfg.theta))
    extra = sorted(set(obs_cfg.theta) - set(data.parameters))
    if missing or extra:
        raise ValueError(f"observation θ names {sorted(obs_cfg.theta)} must be the parameters "
                         f"{list(data.parameters)}")
    theta = np.array([obs_cfg.theta[p] for p in data.parameters])
    data.prior.check(theta)
    key = _digest({"obs": obs_cfg.model_dump(mode="json"), "seed": cfg.master_seed,
                   "names": list(data.names)})
    if path.is_file():
        old = load_observation(path)
        if old.provenance.get("key") == key:
            return old, True
    obs = mock_observation(_reference(cfg, base), theta, cfg.master_seed, obs_cfg.index,
                           prior=data.prior)
    obs = Observation(obs.x, obs.names, obs.k, obs.parameters, obs.theta,
                      {**obs.provenance, "key": key})
    save_observation(path, obs)
    return obs, False


# ------------------------------------------------------------------------------ training
def _train(cfg: PipelineConfig, directory: Path, train: TrainingData, obs: Observation,
           progress: bool, base):
    path = directory / "estimator.pt"
    key = _digest({"estimator": cfg.estimator.model_dump(mode="json"),
                   "training": cfg.training.model_dump(mode="json"),
                   "sequential": cfg.sequential.model_dump(mode="json"),
                   "seed": cfg.master_seed, "theta": _array_digest(train.theta),
                   "x": _array_digest(train.x)})
    if path.is_file():
        try:
            ckpt = load_checkpoint(path)
            if ckpt.extra.get("key") == key:
                return ckpt, True
        except ValueError:
            pass  # another layout or version: retrain, replacing it atomically
    members = train_estimators(train, cfg.estimator, cfg.training, cfg.master_seed, 0,
                               progress=progress)
    extra = {"key": key, "data": train.report.to_dict(), "rounds": 1}
    ckpt = Checkpoint(cfg.estimator, cfg.training, train.prior, train.names, train.k,
                      members, extra)
    for r in range(1, cfg.sequential.rounds):
        ckpt = _sequential_round(cfg, directory, ckpt, train, obs, r, progress, base)
    save_checkpoint(path, ckpt)
    return ckpt, False


def _sequential_round(cfg, directory, ckpt, train, obs, r, progress, base):
    """Round r: simulate at posterior draws given x_o, retrain on everything (NPE-C loss)."""
    import torch

    n = cfg.sequential.simulations_per_round
    proposal = ckpt.posterior()
    proposal.set_default_x(torch.as_tensor(obs.x))
    theta = sample_posterior(proposal, obs.x, n, cfg.master_seed, call=1000 + r)
    if cfg.gaussian_field is not None:
        model = cfg.gaussian_field.model("exact")
        offset = cfg.gaussian_field.n_simulations + (r - 1) * n
        x = np.stack([model(t, simulation_seed(cfg.master_seed, offset + i))
                      for i, t in enumerate(theta)])
        new = from_model(model, theta, x)
    else:
        from cocasbi.campaign import plan_campaign, run_campaign

        ccfg = _campaign_config(cfg, base)
        # its own seed tree, so its phases are not those of any other campaign's rows
        ccfg = ccfg.model_copy(update={
            "n_simulations": n,
            "master_seed": derived_master_seed(ccfg.master_seed, Stream.ROUND, r)})
        store = plan_campaign(ccfg, directory / f"round_{r}", theta=theta)
        run_campaign(store.directory, progress=progress)
        new = training_set(store.merged_path, min_rows=2)
    members = train_estimators(train, cfg.estimator, cfg.training, cfg.master_seed, r,
                               progress=progress, rounds=[(new, proposal)])
    extra = {**ckpt.extra, "rounds": r + 1}
    return Checkpoint(ckpt.estimator, ckpt.training, ckpt.prior, ckpt.names, ckpt.k, members,
                      extra)


# ------------------------------------------------------------------------------ the job
def run_pipeline(cfg: PipelineConfig, directory: str | Path | None = None, *,
                 progress: bool = True, echo: Callable[[str], None] = print,
                 base: Path | None = None) -> PipelineResult:
    """Run (or resume) the whole job; returns timings, the posterior summary and the verdict.

    ``base``: folder that relative paths of an inline campaign are taken from.
    """
    directory = Path(directory or cfg.directory)
    directory.mkdir(parents=True, exist_ok=True)
    stages = _Stages(echo)
    _check_truth(cfg, base)
    if cfg.gaussian_field is not None:
        data = stages.run("simulate", _simulate_field, cfg, directory, progress)
    else:
        data = stages.run("simulate", _simulate_campaign, cfg, directory, progress, base)
    echo(f"simulations: {data.report}")
    train, test = split_held_out(data, cfg.n_test, cfg.training.min_simulations)
    obs = stages.run("observe", _observe, cfg, directory, data, base)
    check_layout(obs.names, obs.k, data.names, data.k)  # before any training
    ckpt = stages.run("train", _train, cfg, directory, train, obs, progress, base)
    ckpt.check_layout(obs.names, obs.k)
    posterior = ckpt.posterior()

    def sample():
        samples = sample_posterior(posterior, obs.x, cfg.n_samples, cfg.master_seed, call=0)
        summ = summarize(samples, ckpt.parameters, obs.theta, cfg.credibility)
        title = f"{cfg.name}: NPE ({cfg.estimator.model}), {len(train)} simulations"
        reference = None
        if cfg.gaussian_field is not None:  # the known answer, drawn from its own stream
            exact = cfg.gaussian_field.model().exact_posterior(obs.x)
            rng = np.random.default_rng(stream_seed(cfg.master_seed, Stream.POSTERIOR, 2))
            reference = exact.sample(cfg.n_samples, rng)
            known["exact"] = dict(zip(("mean", "std"), exact.moments(), strict=True))
        corner_plot(summ, directory / "corner.png", prior=ckpt.prior, title=title,
                    reference=reference, reference_label="exact")
        np.save(directory / "posterior_samples.npy", samples.astype(np.float32))
        return summ, False

    known: dict = {}
    summ = stages.run("sample", sample)

    def diagnose():
        if len(test) < 10:
            echo(f"diagnostics skipped: {len(test)} held-out simulations (need >= 10)")
            return None, False
        res = run_diagnostics(posterior, ckpt.prior.to_sbi(), test.theta, test.x,
                              cfg.diagnostics, cfg.master_seed, call=1,
                              parameters=ckpt.parameters, progress=progress)
        write_report(res, directory / "diagnostics.json")
        plot_diagnostics(res, directory / "diagnostics.png")
        return res, False

    diag = stages.run("diagnose", diagnose)
    result = PipelineResult(directory, stages.timings, stages.reused, summ.to_dict(),
                            None if diag is None else ("pass" if diag.passed else "fail"))
    summary = {"name": cfg.name, "data": data.report.to_dict(), "n_train": len(train),
               "n_test": len(test), "training": [m.summary for m in ckpt.members],
               "posterior": result.summary, **known, "diagnostics": None if diag is None else
               diag.to_dict(), "timings_s": stages.timings, "reused": stages.reused}
    with atomic_path(directory / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_path(directory / "report.md") as tmp:
        tmp.write_text(markdown_report(cfg, summary))
    for p, e in result.summary["parameters"].items():
        if "truth_percentile" in e:
            echo(f"{p}: truth {e['truth']:.4g} at percentile {e['truth_percentile']:.1f} "
                 f"(posterior {e['mean']:.4g} ± {e['std']:.3g})")
    if "exact" in known:
        echo(f"exact posterior: {known['exact']['mean']:.4g} ± {known['exact']['std']:.3g}")
    if result.verdict:
        echo(f"diagnostics: {result.verdict}")
    return result


def markdown_report(cfg: PipelineConfig, s: dict) -> str:
    """A short Markdown report of a pipeline run."""
    lines = [f"# Inference report: {cfg.name}", "",
             f"Simulations: {s['data']['n_good']} of {s['data']['n_total']} usable "
             f"(dropped: {s['data']['dropped'] or 'none'}); {s['n_train']} for training, "
             f"{s['n_test']} held out for diagnostics.", "",
             f"Estimator: {cfg.estimator.model} with {cfg.estimator.embedding} embedding, "
             f"ensemble of {cfg.training.ensemble}; epochs "
             f"{[m['epochs'] for m in s['training']]}.", "",
             "| parameter | truth | mean | std | 68% interval | truth percentile |",
             "|---|---|---|---|---|---|"]
    for p, e in s["posterior"]["parameters"].items():
        iv = e["intervals"].get("0.68", next(iter(e["intervals"].values())))
        lines.append(f"| {p} | {e.get('truth', float('nan')):.4g} | {e['mean']:.4g} | "
                     f"{e['std']:.3g} | [{iv[0]:.4g}, {iv[1]:.4g}] | "
                     f"{e.get('truth_percentile', float('nan')):.1f} |")
    if "exact" in s:
        lines += ["", f"Exact posterior (known-answer model): mean {s['exact']['mean']:.4g}, "
                  f"std {s['exact']['std']:.3g}."]
    lines += ["", "![corner](corner.png)", ""]
    d = s["diagnostics"]
    if d:
        lines += [f"Diagnostics on {d['n_simulations']} held-out simulations: "
                  f"**{d['verdict']}** (SBC KS p min "
                  f"{min(d['sbc']['ks_pvals']):.3g}, coverage deviation max "
                  f"{max(d['coverage']['max_deviation']):.3f}, TARP ATC "
                  f"{d['tarp']['atc']:+.3f}).", "", "![diagnostics](diagnostics.png)", ""]
    lines += ["Stage wall times [s]: " + ", ".join(
        f"{k} {v:.1f}{' (reused)' if k in s['reused'] else ''}"
        for k, v in s["timings_s"].items()), ""]
    return "\n".join(lines)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _array_digest(t) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()[:16]
