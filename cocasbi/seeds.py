"""The one seed tree: every random draw of cocasbi comes from ``SeedSequence(master_seed, ...)``.

A *master seed* (an int in a config: ``master_seed`` of a campaign, ``seed`` of a single run)
roots a tree of numpy ``SeedSequence`` streams, one per purpose, told apart by their spawn key:

===============================  =============================================================
spawn key                        stream
===============================  =============================================================
``()`` (the root itself)         design draws of a plan: θ of every simulation
``(i,)``, ``0 <= i < 2**31``     initial phases of simulation ``i`` of a plan
``(Stream.VALIDATION, j)``       inference: train / validation split of round ``j``
``(Stream.TRAINING, j)``         inference: network initialisation and minibatches, member j
``(Stream.POSTERIOR, j)``        inference: posterior sampling and diagnostics, call j
``(Stream.OBSERVATION, j)``      initial phases of mock observation ``j`` (held out)
``(Stream.CERTIFY, j)``          certification: initial phases of paired run ``j`` (held out)
``(Stream.ROUND, r)``            master seed of the campaign of sequential round ``r`` (its own
                                 tree: :func:`derived_master_seed`)
===============================  =============================================================

The purpose tags are ``>= 2**31``, outside the range of simulation indices, so no two streams
coincide and a held-out seed is never a training seed. A stream depends only on the master
seed and its key: never on worker count, order or resumption.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

MAX_SIMULATIONS = 2**31  #: simulation indices (spawn keys ``(i,)``) stay below this


class Stream(IntEnum):
    """Purpose tags of the seed tree (first word of a two-word spawn key)."""

    VALIDATION = 2**31 + 1
    TRAINING = 2**31 + 2
    POSTERIOR = 2**31 + 3
    OBSERVATION = 2**31 + 4
    CERTIFY = 2**31 + 5
    ROUND = 2**31 + 6


def _check_master(master_seed) -> int:
    if isinstance(master_seed, bool) or not isinstance(master_seed, int | np.integer):
        raise TypeError(f"master seed must be an int, got {master_seed!r}")
    if master_seed < 0:
        raise ValueError(f"master seed {master_seed} must be >= 0")
    return int(master_seed)


def design_seed(master_seed: int) -> np.random.SeedSequence:
    """Stream of a plan's design draws (the root of the tree)."""
    return np.random.SeedSequence(_check_master(master_seed))


def simulation_seed(master_seed: int, index: int) -> np.random.SeedSequence:
    """Initial-phase stream of simulation ``index`` of a plan: spawn key ``(index,)``."""
    if not 0 <= int(index) < MAX_SIMULATIONS:
        raise ValueError(f"simulation index {index} outside [0, 2**31)")
    return np.random.SeedSequence(_check_master(master_seed), spawn_key=(int(index),))


def stream_seed(master_seed: int, stream: Stream, index: int = 0) -> np.random.SeedSequence:
    """Stream ``(stream, index)`` of the tree (see the table in the module docstring)."""
    return np.random.SeedSequence(_check_master(master_seed),
                                  spawn_key=(int(Stream(stream)), int(index)))


def derived_master_seed(master_seed: int, stream: Stream, index: int = 0) -> int:
    """A new master seed (an int in [0, 2**63)) drawn from stream ``(stream, index)``, for a
    campaign that must not share any stream with its parent (e.g. a sequential round)."""
    word = stream_seed(master_seed, stream, index).generate_state(2, np.uint32)
    return int(word[0]) << 31 | int(word[1]) >> 1


def as_seed_sequence(seed) -> np.random.SeedSequence:
    """An int (a run's own master seed: the stream ``SeedSequence(seed)``) or a SeedSequence."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(_check_master(seed))


def describe(seed) -> dict:
    """JSON-serialisable provenance of a seed: ``{"entropy": ..., "spawn_key": [...]}``.

    ``as_seed_sequence(from_description(describe(s)))`` rebuilds the same stream, whether the
    seed was given as an int or as a SeedSequence.
    """
    seq = as_seed_sequence(seed)
    return {"entropy": int(seq.entropy), "spawn_key": [int(k) for k in seq.spawn_key]}


def from_description(info: dict) -> np.random.SeedSequence:
    """Inverse of :func:`describe`."""
    return np.random.SeedSequence(int(info["entropy"]), spawn_key=tuple(info["spawn_key"]))
