"""Input/output: particle snapshots in a Gadget-4-like HDF5 layout."""

from cocasbi.io.snapshot import (
    SnapshotData,
    SnapshotError,
    particle_mass,
    read_snapshot,
    write_snapshot,
)

__all__ = ["SnapshotData", "SnapshotError", "particle_mass", "read_snapshot", "write_snapshot"]
