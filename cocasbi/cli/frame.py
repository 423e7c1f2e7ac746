"""``cocasbi frame ...``: make training data and train frame emulators.

    cocasbi frame make-data tiny --n-sims 32 --seed 1 --out data/frame_tiny
    cocasbi frame train data/frame_tiny --kind transfer -K 4 --out frame.npz
    cocasbi frame train data/frame_tiny --kind vnet --epochs 20 --out frame.pt
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    config: Annotated[str, typer.Argument(help="config file or built-in name (tiny, paper)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (one HDF5 per sim)")],
    n_sims: Annotated[int, typer.Option("--n-sims", "-n", help="number of simulations")] = 32,
    seed: Annotated[int, typer.Option(
        "--seed", help="master seed: sim i uses SeedSequence(seed, (i,))")] = 0,
    start: Annotated[int, typer.Option("--start", help="index of the first simulation")] = 0,
    prior: Annotated[list[str] | None, typer.Option(
        "--prior", help="vary a parameter uniformly, NAME=LO:HI (repeatable)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Run COLA simulations and store LPT inputs and residual momenta (resumable)."""
    from cocasbi.config import load_config
    from cocasbi.frame.data import make_training_data

    cfg = load_config(config)
    paths = make_training_data(cfg, out, n_sims, master_seed=seed, start=start,
                               prior=_parse_prior(prior), progress=progress)
    typer.echo(f"{len(paths)} simulations in {out}")


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Argument(help="directory written by make-data")],
    out: Annotated[Path, typer.Option("--out", "-o", help="frame file (.npz transfer, .pt vnet)")],
    kind: Annotated[str, typer.Option("--kind", help="transfer | vnet")] = "transfer",
    K: Annotated[int, typer.Option("-K", "--n-basis", help="number of time-basis functions")] = 4,
    degree: Annotated[int, typer.Option(
        "--degree", help="polynomial degree in (Omega_m, sigma8); 0 = fixed")] = 0,
    n_val: Annotated[int, typer.Option(
        "--n-val", help="vnet: simulations held out for validation")] = 2,
    epochs: Annotated[int, typer.Option("--epochs")] = 20,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 4,
    crop: Annotated[int, typer.Option(
        "--crop", help="vnet: random periodic crop size (0 = full box)")] = 0,
    base_channels: Annotated[int, typer.Option("--base-channels")] = 16,
    levels: Annotated[int, typer.Option("--levels")] = 3,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume/--no-resume")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Fit a frame emulator on stored COLA residuals and save it (loads on CPU)."""
    from cocasbi.frame.basis import fit_time_basis
    from cocasbi.frame.data import list_samples
    from cocasbi.frame.emulator import FrameEmulator

    paths = list_samples(data)
    if not paths:
        raise typer.BadParameter(f"no sim_*.h5 files in {data}")
    if kind == "transfer":
        from cocasbi.frame.transfer import CosmologyFeatures, fit_transfer

        basis = fit_time_basis(paths, K=K)
        model = fit_transfer(paths, basis, CosmologyFeatures(degree=degree), progress=progress)
        meta = {"data": str(data), "n_train_sims": len(paths), "K": K, "degree": degree,
                "captured_fraction": float(basis.captured_fraction()[K - 1])}
        path = FrameEmulator("transfer", basis, model, meta).save(out)
    elif kind == "vnet":
        from cocasbi.frame.neural import train_vnet_frame

        path = train_vnet_frame(paths, out, K=K, n_val=n_val, epochs=epochs, lr=lr,
                                batch_size=batch_size, crop=crop or None,
                                base_channels=base_channels, levels=levels, device=device,
                                resume=resume, seed=seed, progress=progress)
    else:
        raise typer.BadParameter(f"--kind must be transfer or vnet, not {kind!r}")
    typer.echo(f"saved {path}")
