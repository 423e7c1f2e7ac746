"""``cocasbi certify``: certify a configuration against reference PM runs (exit 0 pass, 1 fail).

Errors that prevent the certification from running (bad configuration, missing frame) end as
one ``error: ...`` line with exit code 2, through the command group.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer()


@app.command()
def certify(
    config: str = typer.Argument("tiny", help="Certification YAML file or built-in name (tiny)."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Output directory (default: the config's output.directory)."),
    threads: int = typer.Option(None, help="Threads per simulation (default: the config's)."),
    workers: int = typer.Option(
        None, help="Run the pairs as a campaign on a local Dask farm of this many worker "
        "processes (0 = automatic); default: the config's farm section (in process)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Run paired simulations over a design of θ, check field-level metrics, convergence and
    the Fisher parameter bias against thresholds; write JSON, Markdown and plots."""
    from cocasbi.certify import certify as run_certification
    from cocasbi.certify import certify_config_from_dict, load_certify_config
    from cocasbi.cli.common import fail, writable_directory

    cfg = load_certify_config(config)
    data = cfg.model_dump(mode="json")
    if threads is not None:
        data["threads"] = threads
    if workers is not None:
        data["farm"] = {**data["farm"], "enabled": True, "workers": workers}
    cfg = certify_config_from_dict(data, source="command line")
    outdir = writable_directory(Path(out) if out is not None else Path(cfg.output.directory))
    typer.echo(f"cocasbi certify: {cfg.name}: {cfg.under_test.method.upper()} against "
               f"{cfg.reference.method.upper()}-{cfg.reference.n_steps}, writing to {outdir}")
    try:
        report = run_certification(cfg, out_dir=outdir, progress=progress)
    except RuntimeError as err:  # pairs that did not finish on the farm: could not run
        fail(str(err), code=2)
    for check in report.checks:
        typer.echo(f"  {'pass' if check.passed else 'FAIL'}  {check.name:15s} "
                   f"{check.value:10.4g} (threshold {check.threshold:.3g})  {check.detail}")
    verdict = "PASS" if report.passed else "FAIL: " + ", ".join(report.failed)
    typer.echo(f"{report.under_test}: {verdict} (report {outdir / (report.name + '.md')})")
    raise typer.Exit(report.exit_code)
