"""The COCA frame-of-reference emulator at run time.

Modules: :mod:`~cocasbi.frame.emulator` (the Frame objects, :func:`load_frame`),
:mod:`~cocasbi.frame.basis` (time basis: one model evaluation per simulation),
:mod:`~cocasbi.frame.transfer` (Fourier-space transfer functions),
:mod:`~cocasbi.frame.neural` (the styled V-net as a frame model),
:mod:`~cocasbi.frame.vnet` (the network), :mod:`~cocasbi.frame.files` and
:mod:`~cocasbi.frame.checkpoint` (validated frame and model files). Training data, fitting and
training live in :mod:`cocasbi.frame.training`, the only frame code that runs simulations.
Torch is imported only by the V-net modules.
"""

from cocasbi.frame.emulator import (
    EmulatedFrame,
    FrameEmulator,
    load_frame,
    shipped_frame_path,
)

__all__ = ["EmulatedFrame", "FrameEmulator", "load_frame", "shipped_frame_path"]
