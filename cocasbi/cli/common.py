"""Helpers shared by the command modules: failing with one line, checking output directories."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def fail(message: str, code: int = 2):
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def writable_directory(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable, before any expensive work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cocasbi-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        fail(f"output directory {path} is not writable: {err.strerror or err}")
    return path
