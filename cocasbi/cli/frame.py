"""``cocasbi frame ...``: make training data and train frame emulators.

    cocasbi frame make-data tiny --n-sims 32 --seed 1 --out data/frame_tiny
    cocasbi frame train data/frame_tiny --kind transfer -K 4 --out frame.npz
    cocasbi frame train data/frame_tiny --kind vnet --epochs 20 --out frame.pt
    cocasbi frame train data/frame_tiny --kind local --steps 600 --out frame.pt

(``train`` takes the make-data directory or its ``results/`` folder.)
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="COCA frame emulator: training data and training.",
                  no_args_is_help=True)


def _parse_prior(prior: list[str] | None) -> dict[str, tuple[float, float]] | None:
    out = {}
    for item in prior or []:
        try:
            name, rng = item.split("=")
            lo, hi = (float(x) for x in rng.split(":"))
        except ValueError:
            raise typer.BadParameter(
                f"prior {item!r}: use NAME=LO:HI, e.g. sigma8=0.7:0.9") from None
        out[name] = (lo, hi)
    return out or None


@app.command("make-data")
def make_data(
    config: str = typer.Argument(..., help="config file or built-in name (tiny, paper)"),
    out: Path = typer.Option(..., "--out", "-o",
                             help="campaign directory; the files go to OUT/results"),
    n_sims: int = typer.Option(32, "--n-sims", "-n", help="number of simulations"),
    seed: int = typer.Option(0, "--seed", help="master seed: sim i uses SeedSequence(seed, (i,))"),
    start: int = typer.Option(0, "--start", help="index of the first simulation"),
    prior: list[str] | None = typer.Option(
        None, "--prior", help="vary a parameter uniformly, NAME=LO:HI (repeatable)"),
    workers: int = typer.Option(
        0, "--workers", help="worker processes (0 = one per core, memory permitting)"),
    threads_per_worker: int = typer.Option(
        0, "--threads-per-worker", help="threads per simulation (0 = auto)"),
    timeout: float = typer.Option(3600, "--timeout", help="per-simulation limit [s]"),
    force: bool = typer.Option(False, "--force",
                               help="replace another plan in OUT (e.g. other --n-sims)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
):
    """Run COLA simulations on the campaign farm and store LPT inputs and residual momenta
    (resumable; failures recorded in OUT/failures)."""
    from cocasbi.campaign.frame_data import make_frame_data
    from cocasbi.config import load_config

    cfg = load_config(config)
    paths, report = make_frame_data(
        cfg, out, n_sims, master_seed=seed, start=start, prior=_parse_prior(prior),
        execution={"workers": workers, "threads_per_worker": threads_per_worker,
                   "timeout": timeout}, progress=progress, force=force)
    failed = n_sims - len(paths)
    typer.echo(f"{len(paths)} simulations in {out / 'results'}"
               + (f" ({failed} failed or pending: `cocasbi campaign status {out}`)"
                  if failed else ""))


@app.command("train")
def train_cmd(
    data: Path = typer.Argument(..., help="directory written by make-data (or its results/)"),
    out: Path = typer.Option(..., "--out", "-o",
                             help="frame file (.npz transfer, .pt vnet or local)"),
    kind: str = typer.Option("transfer", "--kind", help="transfer | vnet | local (the force-"
                             "input transfer frame plus a local network)"),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="vnet: YAML training config (options below override it)"),
    K: int | None = typer.Option(None, "-K", "--n-basis",
                                 help="number of time-basis functions (default 4)"),
    degree: int | None = typer.Option(
        None, "--degree", help="polynomial degree in (Omega_m, sigma8); 0 = fixed "
        "(default transfer 0, vnet base model 1)"),
    n_val: int | None = typer.Option(
        None, "--n-val", help="vnet: simulations held out for validation (default 2)"),
    epochs: int | None = typer.Option(None, "--epochs", help="vnet (default 20)"),
    steps: int | None = typer.Option(None, "--steps", help="local: Adam steps (default 600)"),
    lr: float | None = typer.Option(None, "--lr", help="vnet (default 1e-3)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="vnet (default 4)"),
    crop: int | None = typer.Option(
        None, "--crop", help="vnet: random periodic crop size (0 = full box) (default 0)"),
    base_channels: int | None = typer.Option(None, "--base-channels", help="vnet (default 16)"),
    levels: int | None = typer.Option(None, "--levels", help="vnet (default 3)"),
    time_budget: float | None = typer.Option(
        None, "--time-budget", help="vnet: training time budget [s]"),
    seed: int | None = typer.Option(None, "--seed", help="vnet (default 0)"),
    device: str = typer.Option("cpu", "--device", help="vnet: cpu, cuda or auto"),
    resume: bool = typer.Option(
        False, "--resume/--no-resume", help="vnet: continue from the checkpoint beside --out"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
):
    """Fit a frame emulator on stored COLA residuals and save it (loads on CPU)."""
    from cocasbi.frame.training.data import list_samples

    if kind not in ("transfer", "vnet", "local"):
        raise ValueError(f"--kind must be transfer, vnet or local, not {kind!r}")
    if kind == "vnet":
        from cocasbi.frame.training.config import VNetTrainingConfig

        options = dict(K=K, degree=degree, n_val=n_val, epochs=epochs, lr=lr,
                       batch_size=batch_size, crop=None if crop == 0 else crop,
                       base_channels=base_channels, levels=levels, time_budget_s=time_budget,
                       seed=seed)
        if config is not None:
            settings = VNetTrainingConfig.from_yaml(config, **options)
        else:
            settings = VNetTrainingConfig.from_dict(
                {k: v for k, v in options.items() if v is not None}, "command-line options")
        if crop == 0:  # explicit "whole boxes" overrides a crop in the YAML file
            settings = VNetTrainingConfig.from_dict({**settings.model_dump(), "crop": None})
    elif config is not None:
        raise ValueError(f"--config is a V-net training config; not used with --kind {kind}")
    if (data / "results").is_dir():  # a make-data (campaign) directory
        data = data / "results"
    paths = list_samples(data)
    if not paths:
        raise ValueError(f"no sim_*.h5 files in {data}")
    if kind == "transfer":
        from cocasbi.frame.emulator import FrameEmulator
        from cocasbi.frame.training.basis import fit_time_basis
        from cocasbi.frame.training.transfer import fit_transfer
        from cocasbi.frame.transfer import CosmologyFeatures

        K = 4 if K is None else K
        degree = 0 if degree is None else degree
        if K < 1:
            raise ValueError(f"-K {K} must be >= 1")
        basis = fit_time_basis(paths, K=K)
        model = fit_transfer(paths, basis, CosmologyFeatures(degree=degree), progress=progress)
        meta = {"data": str(data), "n_train_sims": len(paths), "K": K, "degree": degree,
                "captured_fraction": float(basis.captured_fraction()[K - 1])}
        path = FrameEmulator("transfer", basis, model, meta).save(out)
    elif kind == "local":
        from cocasbi.frame.training.local import LocalTrainingSettings, train_local_frame

        given = dict(steps=steps, lr=lr, batch=batch_size, crop=crop, seed=seed)
        settings = LocalTrainingSettings(**{k: v for k, v in given.items() if v is not None})
        path = train_local_frame(paths, out, settings, K=4 if K is None else K,
                                 degree=1 if degree is None else degree,
                                 n_val=0 if n_val is None else n_val, progress=progress)
    else:
        from cocasbi.frame.training.neural import train_vnet_frame

        path = train_vnet_frame(paths, out, settings, device=device, resume=resume,
                                progress=progress)
    typer.echo(f"saved {path}")
