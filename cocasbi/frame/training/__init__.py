"""Training the COCA frame emulator: the only frame code that runs simulations.

Modules: :mod:`~cocasbi.frame.training.data` (one COLA run as a training sample, HDF5 data
sets), :mod:`~cocasbi.frame.training.basis` (fitting the time basis),
:mod:`~cocasbi.frame.training.transfer` (fitting transfer functions),
:mod:`~cocasbi.frame.training.train` (generic resumable trainer),
:mod:`~cocasbi.frame.training.config` (validated V-net training settings) and
:mod:`~cocasbi.frame.training.neural` (training the V-net frame). Their results load with
:func:`cocasbi.frame.load_frame`.
"""
