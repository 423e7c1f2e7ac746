"""The COCA frame-of-reference emulator.

Modules: :mod:`~cocasbi.frame.data` (COLA training data in HDF5), :mod:`~cocasbi.frame.basis`
(time basis: one model evaluation per simulation), :mod:`~cocasbi.frame.transfer` (learned
Fourier-space transfer functions), :mod:`~cocasbi.frame.neural` (the styled V-net adapter),
:mod:`~cocasbi.frame.emulator` (the Frame object, :func:`load_frame`), :mod:`~cocasbi.frame.cli`.
Torch is imported only by the V-net modules.
"""

from cocasbi.frame.emulator import (
    EmulatedFrame,
    FrameEmulator,
    load_frame,
    shipped_frame_path,
)

__all__ = ["EmulatedFrame", "FrameEmulator", "load_frame", "shipped_frame_path"]
