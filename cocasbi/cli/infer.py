"""``cocasbi infer ...``: neural posterior estimation: pipeline, train, sample, diagnose."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

app = typer.Typer(help="Neural posterior estimation: pipeline, train, sample, diagnose.",
                  no_args_is_help=True)


@app.callback()
def _quiet():
    """Neural posterior estimation: pipeline, train, sample, diagnose."""
    # torch's deprecation note raised inside sbi's MDN / flows: noise, not a problem
    warnings.filterwarnings("ignore", message=".*triangular_solve is deprecated")

_CONFIG = typer.Option("tiny", "--config", "-c",
                       help="inference YAML or built-in name (tiny, field_quick)")
_PROGRESS = typer.Option(True, "--progress/--no-progress", help="progress bars")


@app.command("pipeline")
def pipeline_command(
        config: str = typer.Argument("tiny", help="inference YAML or built-in name "
                                                  "(tiny, field_quick)"),
        directory: Path | None = typer.Option(None, "--directory", "-d",
                                              help="output folder (default: the config's)"),
        quick: bool = typer.Option(False, "--quick", help="the miniature Gaussian-field job "
                                                          "(field_quick) instead of CONFIG"),
        progress: bool = _PROGRESS):
    """Simulate (campaign), train NPE, observe a mock, sample, diagnose, report. Resumable."""
    from cocasbi.inference.config import load_inference_config, resolve_inference_config
    from cocasbi.inference.pipeline import run_pipeline

    name = "field_quick" if quick else config
    cfg = load_inference_config(name)
    result = run_pipeline(cfg, directory, progress=progress, echo=typer.echo,
                          base=resolve_inference_config(name).parent)
    typer.echo(f"report: {result.directory / 'report.md'}")


@app.command("train")
def train_command(
        campaign_h5: Path = typer.Argument(..., help="merged campaign.h5"),
        out: Path = typer.Option(..., "--out", "-o", help="checkpoint file to write"),
        config: str = _CONFIG,
        n_test: int | None = typer.Option(None, help="hold out the last N rows (default: "
                                                      "the config's n_test)"),
        progress: bool = _PROGRESS):
    """Train NPE on a merged campaign file and write a checkpoint."""
    from cocasbi.inference.checkpoint import Checkpoint, save_checkpoint
    from cocasbi.inference.config import load_inference_config
    from cocasbi.inference.data import training_set
    from cocasbi.inference.estimator import train_estimators
    from cocasbi.inference.pipeline import split_held_out

    cfg = load_inference_config(config)
    data = training_set(campaign_h5)
    typer.echo(f"simulations: {data.report}")
    train, _ = split_held_out(data, cfg.n_test if n_test is None else n_test,
                      cfg.training.min_simulations)
    members = train_estimators(train, cfg.estimator, cfg.training, cfg.master_seed,
                               progress=progress)
    save_checkpoint(out, Checkpoint(cfg.estimator, cfg.training, train.prior, train.names,
                                    train.k, members, {"data": train.report.to_dict(),
                                                       "campaign": str(campaign_h5)}))
    typer.echo(f"checkpoint: {out} (epochs {[m.summary['epochs'] for m in members]})")


@app.command("sample")
def sample_command(
        checkpoint: Path = typer.Argument(..., help="checkpoint written by train / pipeline"),
        observation: Path = typer.Argument(..., help="observation HDF5 (x, names[, k, theta])"),
        out: Path = typer.Option(Path("posterior"), "--out", "-o", help="output folder"),
        n: int = typer.Option(10000, "--n", min=2, help="posterior samples"),
        seed: int = typer.Option(0, help="master seed of the sampling stream"),
        progress: bool = _PROGRESS):
    """Sample the posterior of one observation: samples, summary JSON, corner plot."""
    import numpy as np

    from cocasbi.inference.checkpoint import load_checkpoint
    from cocasbi.inference.observation import load_observation
    from cocasbi.inference.posterior import corner_plot, sample_posterior, summarize

    ckpt = load_checkpoint(checkpoint)
    obs = load_observation(observation)
    ckpt.check_layout(obs.names, obs.k)
    samples = sample_posterior(ckpt.posterior(), obs.x, n, seed, progress=progress)
    truth = obs.theta if obs.parameters == ckpt.parameters else None
    summ = summarize(samples, ckpt.parameters, truth)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "posterior_samples.npy", samples.astype(np.float32))
    (out / "posterior.json").write_text(json.dumps(summ.to_dict(), indent=1))
    corner_plot(summ, out / "corner.png", prior=ckpt.prior)
    for p, e in summ.to_dict()["parameters"].items():
        line = f"{p}: {e['mean']:.4g} ± {e['std']:.3g}"
        if "truth_percentile" in e:
            line += f"  (truth {e['truth']:.4g} at percentile {e['truth_percentile']:.1f})"
        typer.echo(line)


@app.command("diagnose")
def diagnose_command(
        checkpoint: Path = typer.Argument(..., help="checkpoint written by train / pipeline"),
        campaign_h5: Path = typer.Argument(..., help="merged campaign.h5 of held-out runs"),
        out: Path = typer.Option(Path("diagnostics"), "--out", "-o", help="output folder"),
        last: int | None = typer.Option(None, help="use only the last N rows (the ones "
                                                   "held out from training)"),
        config: str = _CONFIG, progress: bool = _PROGRESS):
    """SBC, expected coverage and TARP on held-out simulations; exit 1 when they fail."""
    from cocasbi.inference.checkpoint import load_checkpoint
    from cocasbi.inference.config import load_inference_config
    from cocasbi.inference.data import training_set
    from cocasbi.inference.diagnostics import plot_diagnostics, run_diagnostics, write_report
    from cocasbi.inference.pipeline import split_held_out

    cfg = load_inference_config(config)
    ckpt = load_checkpoint(checkpoint)
    data = training_set(campaign_h5)
    ckpt.check_layout(data.names, data.k, what="campaign")
    if last is not None:
        _, data = split_held_out(data, last, 0)
    res = run_diagnostics(ckpt.posterior(), ckpt.prior.to_sbi(), data.theta, data.x,
                          cfg.diagnostics, cfg.master_seed, parameters=ckpt.parameters,
                          progress=progress)
    write_report(res, out / "diagnostics.json")
    plot_diagnostics(res, out / "diagnostics.png")
    typer.echo(f"diagnostics on {len(data)} simulations: {'pass' if res.passed else 'fail'} "
               f"{res.checks}")
    if not res.passed:
        raise typer.Exit(1)
