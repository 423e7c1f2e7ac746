"""The ``cocasbi`` command line: one typer style, lazily loaded commands, one error path.

Each command or group lives in a module of this package and is imported only when it runs (or
when its own ``--help`` is asked for), so ``cocasbi --help`` loads neither numba, pyFFTW, torch
nor Dask. Every anticipated failure (bad configuration, missing file, invalid value) ends as a
one-line ``error: ...`` on stderr with exit code 2; set ``COCASBI_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import importlib
import os

import typer
from typer.core import TyperGroup

#: command name -> (module, attribute of its typer app, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("cocasbi.cli.simulate", "app",
                 "Run one simulation: snapshot, P(k) file and plot, summary."),
    "frame": ("cocasbi.cli.frame", "app", "COCA frame emulator: training data, training."),
    "campaign": ("cocasbi.cli.campaign", "app",
                 "Simulation campaigns on Dask: plan, run, status, merge."),
    "infer": ("cocasbi.cli.infer", "app",
              "Neural posterior estimation: train, sample, diagnose, pipeline."),
    "certify": ("cocasbi.cli.certify", "app",
                "Certify a configuration against full PM runs (exit 0 pass, 1 fail)."),
}


#: Exceptions that mean "the input or the environment is wrong", not "cocasbi has a bug".
USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError, MemoryError, KeyError,
               TypeError)


def error_message(err: BaseException) -> str:
    """One line naming the problem (a multi-line message is joined with "; ")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(f"{line};" if not line.endswith(":") else line for line in lines)
    text = text.rstrip(";") or type(err).__name__
    if isinstance(err, KeyError | TypeError | MemoryError):
        text = f"{type(err).__name__}: {text}"
    return text


class LazyGroup(TyperGroup):
    """A click group whose subcommands are imported on first use, and the one error path:
    any of :data:`USER_ERRORS` raised by a command is printed as one ``error: ...`` line on
    stderr and ends the process with exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if os.environ.get("COCASBI_DEBUG"):
                raise
            typer.secho(f"error: {error_message(err)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        sub = getattr(importlib.import_module(module), attr)
        command = typer.main.get_command(sub)
        command.name = name
        return command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=LazyGroup,
    help="COCA-accelerated particle-mesh simulations for cosmological simulation-based "
    "inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root():
    """COCA-accelerated particle-mesh simulations for cosmological simulation-based
    inference."""


def main(argv=None) -> None:
    """Console entry point: configure the process (:func:`cocasbi.threads.configure_process`),
    then run the app."""
    from cocasbi.threads import configure_process

    configure_process()
    app(args=argv, prog_name="cocasbi")
