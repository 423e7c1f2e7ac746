"""``cocasbi simulate``: one simulation, its snapshot, P(k) file and plot, and a summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cocasbi.cli.common import fail, writable_directory
from cocasbi.config import load_config

app = typer.Typer()


def plot_power(path: Path, ps, linear_k, linear_p, title: str, shot_noise: float) -> None:
    """P(k) against linear theory, with the ratio underneath (PNG)."""
    import matplotlib

    from cocasbi.io.atomic import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 6),
                                      gridspec_kw={"height_ratios": [3, 1]})
    ok = ps.n_modes > 0
    top.errorbar(ps.k[ok], ps.power[ok], yerr=ps.sigma()[ok], fmt="o", ms=3, label="measured")
    top.loglog(linear_k, linear_p, "k-", lw=1, label="linear theory")
    top.axhline(shot_noise, color="grey", ls=":", label="shot noise V/N")
    top.set_ylabel(r"$P(k)$ [$(h^{-1}\mathrm{Mpc})^3$]")
    top.legend()
    top.set_title(title)
    lin_at_k = np.interp(ps.k[ok], linear_k, linear_p)
    bottom.semilogx(ps.k[ok], ps.power[ok] / lin_at_k, "o", ms=3)
    bottom.axhline(1.0, color="k", lw=1)
    bottom.set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    bottom.set_ylabel(r"$P/P_\mathrm{lin}$")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


@app.command()
def simulate(
    config: str = typer.Argument("tiny", help="YAML file or built-in name (tiny, paper)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default: the config's)."),
    method: str = typer.Option(None, help="pm | cola | coca (default: the config's)."),
    steps: int = typer.Option(None, help="Number of KDK steps (default: the config's)."),
    seed: int = typer.Option(None, help="Seed of the initial phases (default: the config's)."),
    frame: str = typer.Option(
        None, help="COCA frame file (method coca); 'tiny' is the shipped tiny.yaml frame."),
    forces: str = typer.Option(
        "all", help="Force schedule: all, none, last:K, first:K, even:K, every:M."),
    kicks: str = typer.Option(
        None, help="fine | interval: a computed force kicks over its two half steps, or over "
        "the whole interval it stands for (default: the config's)."),
    snapshot: bool = typer.Option(True, help="Write the final snapshot (HDF5)."),
    plot: bool = typer.Option(True, help="Plot P(k) against linear theory (PNG)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Run one simulation: snapshot, P(k) file and plot, and a summary on the terminal."""
    cfg = load_config(config)
    changes = {k: v for k, v in
               {"method": method, "n_steps": steps, "seed": seed, "kicks": kicks}.items()
               if v is not None}
    if frame is not None and method is None:
        changes["method"] = "coca"
    if changes:
        cfg = cfg.replace(simulation=changes)
    if out is not None:
        cfg = cfg.replace(output={"directory": str(out)})
    sim = cfg.simulation
    outdir = writable_directory(Path(cfg.output.directory))
    frame_obj = None
    if sim.method == "coca":
        if frame is None:
            fail("method coca needs --frame PATH (or --frame tiny for the shipped frame)")
        from cocasbi.frame.emulator import load_frame

        try:
            frame_obj = load_frame(frame)
        except (OSError, ValueError, KeyError) as err:
            fail(f"cannot load frame {frame}: {err}")
    elif forces != "all":
        fail(f"--forces {forces} needs method coca (PM and COLA evaluate every force)")

    from cocasbi.io.snapshot import write_snapshot
    from cocasbi.simulation import simulate as run_simulation
    from cocasbi.stats.power import power_spectrum

    typer.echo(f"cocasbi simulate: {cfg.name}: {sim.n_particles}^3 particles, "
               f"{sim.n_mesh}^3 mesh, L = {sim.box_size:g} Mpc/h, {sim.method.upper()} "
               f"{sim.n_steps} steps, a = {sim.a_init:g} -> {sim.a_final:g}, seed {sim.seed}")
    try:
        result = run_simulation(cfg, frame=frame_obj, forces=forces, progress=progress)
    except (ValueError, FloatingPointError) as err:
        fail(str(err), code=1)
    stem = f"{cfg.name}_{sim.method}_seed{sim.seed}"
    files = []
    if snapshot:
        files.append(write_snapshot(outdir / f"{stem}.hdf5", result.final, cfg, sim.seed,
                                    n_force_evaluations=result.n_force_evaluations))
    dk, kmin, kmax = cfg.power_binning()
    ps = power_spectrum(result.final.positions, sim.box_size, n_mesh=sim.n_mesh, dk=dk,
                        kmin=kmin, kmax=kmax, threads=sim.threads)
    ps.attrs.update(config=cfg.name, method=sim.method, seed=sim.seed, a=result.final.a)
    files.append(ps.save(outdir / f"{stem}_pk.h5"))
    cosmo = result.cosmology
    klin = np.geomspace(ps.k_edges[0], ps.k_edges[-1], 200)
    plin = cosmo.linear_power(klin, a=result.final.a)
    if plot:
        png = outdir / f"{stem}_pk.png"
        plot_power(png, ps, klin, plin, f"{cfg.name}: {sim.method.upper()} {sim.n_steps} steps, "
                   f"a = {result.final.a:g}", ps.shot_noise)
        files.append(png)

    ratio = ps.power / cosmo.linear_power(ps.k, a=result.final.a)
    typer.echo(f"done in {result.wall_time:.2f} s with {result.n_force_evaluations} force "
               f"evaluations")
    disp = np.sqrt(3 * np.mean((result.final.positions - result.lpt.q) ** 2))
    typer.echo(f"rms displacement {disp:.3f} Mpc/h, shot noise {ps.shot_noise:.1f} (Mpc/h)^3")
    cv = np.sqrt(2.0 / np.maximum(ps.n_modes, 1))
    typer.echo("   k [h/Mpc]   P(k) [(Mpc/h)^3]   P/P_lin  ± cosmic var.   N_modes")
    for i in np.linspace(0, len(ps.k) - 1, min(6, len(ps.k))).astype(int):
        typer.echo(f"  {ps.k[i]:9.4f}   {ps.power[i]:14.2f}   {ratio[i]:7.3f}  "
                   f"± {cv[i] * ratio[i]:5.3f}         {ps.n_modes[i]:7d}")
    for f in files:
        typer.echo(f"wrote {f}")

