"""Producers: what one campaign task computes, and the arrays it stores.

A producer is a picklable object with

* ``kind``: a string naming what it stores (``"summaries"``, ``"frame_samples"``, ``"pairs"``...);
* ``__call__(theta, seed) -> dict[str, np.ndarray]``: θ (d,) float64 and the simulation's
  :class:`numpy.random.SeedSequence` in, the arrays to store for that task out. A key
  ``"attrs/NAME"`` with a 0-d value is stored as the file attribute ``NAME`` instead;
* ``provenance() -> dict``: a JSON-serialisable description (stored in the merged file);
* optionally ``names`` and ``k`` [h/Mpc]: the static layout of ``x``, stored with every result
  and once in the merged file; and ``merged``: the keys stacked into the merged file (default
  all; ``()`` for producers whose outputs are too large, such as frame samples).

Built in: :class:`SummaryProducer` (the forward model, x of a summary vector) and
:class:`FrameSampleProducer` (COLA runs as COCA frame training data). Any other object obeying
the protocol runs through :func:`cocasbi.campaign.run_campaign` (``simulator=``) or through a
campaign configuration (``kind`` and ``producer.factory``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from cocasbi.config import Config
from cocasbi.forward import ForwardModel

ATTRIBUTE_PREFIX = "attrs/"
_FORBIDDEN_KEYS = ("theta", "names", "k")


class SummaryProducer:
    """The forward model as a producer: stores ``x`` (float32, laid out as ``names``)."""

    kind = "summaries"
    merged = ("x",)

    def __init__(self, model):
        self.model = model

    @property
    def names(self) -> list[str]:
        return list(self.model.names)

    @property
    def k(self):
        return getattr(self.model, "k", None)

    def __call__(self, theta, seed) -> dict[str, np.ndarray]:
        return {"x": np.asarray(self.model(theta, seed), dtype=np.float32)}

    def provenance(self) -> dict:
        describe = getattr(self.model, "provenance", None)
        return describe() if describe else {"model": repr(self.model)}


class FrameSampleProducer:
    """COLA runs stored as COCA frame training data (what
    :func:`cocasbi.frame.training.data.write_sample` stores, readable by ``read_sample``):
    LPT inputs ``psi1``, ``psi2`` and residual momenta at every query time.

    config: the simulation :class:`~cocasbi.config.Config` (run as COLA with every force);
    parameters: the names of θ's entries; threads: FFT / numba threads per simulation.
    """

    kind = "frame_samples"
    merged: tuple[str, ...] = ()

    def __init__(self, config: Config, parameters=(), threads: int | None = None):
        if threads is not None:
            config = config.replace(simulation={"threads": threads})
        self.config = config
        self.parameters = tuple(parameters)

    def __call__(self, theta, seed) -> dict[str, np.ndarray]:
        from cocasbi.frame.training import data

        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        sample = data.training_sample(
            self.config, dict(zip(self.parameters, map(float, theta), strict=True)), seed)
        attrs = {"frame_format_version": data.FORMAT_VERSION,
                 "seed_json": json.dumps(sample.seed),
                 "config_json": sample.config_json, "box_size": float(sample.box_size),
                 "n_particles": int(sample.psi1.shape[0]), "wall_time": sample.wall_time,
                 "n_force_evaluations": sample.n_force_evaluations,
                 "units": "Mpc/h; momenta p = a^2 dx/dt / H0", **sample.cosmology}
        return {"psi1": sample.psi1, "psi2": sample.psi2, "times": sample.times,
                "boundaries": sample.boundaries, "half": sample.half,
                "residual": sample.residual,
                **{ATTRIBUTE_PREFIX + key: np.asarray(v) for key, v in attrs.items()}}

    def provenance(self) -> dict:
        return {"producer": "cocasbi.campaign.producers.FrameSampleProducer",
                "config": self.config.model_dump(mode="json"),
                "parameters": list(self.parameters)}


class _CallableSummaries(SummaryProducer):
    """A plain ``(θ, seed) -> x`` callable with ``names`` (the older simulator protocol)."""

    def __call__(self, theta, seed) -> dict[str, np.ndarray]:
        return {"x": np.asarray(self.model(theta, seed), dtype=np.float32)}


def as_producer(obj):
    """``obj`` if it is a producer (has ``kind``), else a summaries producer wrapping a
    ``(θ, seed) -> x`` callable that has ``names``."""
    if getattr(obj, "kind", None) is not None:
        return obj
    if callable(obj) and hasattr(obj, "names"):
        return _CallableSummaries(obj)
    raise ValueError(f"{obj!r} is not a producer: it needs `kind` and "
                     "`__call__(theta, seed) -> dict of arrays` (or `names` and "
                     "`__call__(theta, seed) -> x`)")


def producer_from_config(cfg, threads: int | None = None):
    """The producer a campaign configuration describes (not yet run)."""
    if cfg.producer is not None:
        producer = cfg.producer.load()(cfg, threads=threads, **cfg.producer.options)
        if getattr(producer, "kind", None) != cfg.kind:
            raise ValueError(f"producer.factory {cfg.producer.factory} made a producer of kind "
                             f"{getattr(producer, 'kind', None)!r}, the campaign says "
                             f"{cfg.kind!r}")
        return producer
    if cfg.kind == "summaries":
        return SummaryProducer(ForwardModel.from_spec(cfg.forward, threads=threads))
    if cfg.kind == "frame_samples":
        return FrameSampleProducer(cfg.forward.simulation_config(), cfg.forward.parameters,
                                   threads=threads)
    raise ValueError(f"unknown campaign kind {cfg.kind!r}")


def split_output(producer, output) -> tuple[dict[str, np.ndarray], dict, str | None, str]:
    """(arrays, attributes, failure kind or None, error) of a producer's output: a mapping
    of names to arrays, finite where floating, ``x`` shaped as ``names``."""
    if not isinstance(output, Mapping):
        return {}, {}, "error", (f"the producer returned {type(output).__name__}, not a "
                                 "mapping of names to arrays")
    arrays, attributes = {}, {}
    for key, value in output.items():
        if not isinstance(key, str) or not key or key in _FORBIDDEN_KEYS or "/" in key.removeprefix(
                ATTRIBUTE_PREFIX) or key.startswith("."):
            return {}, {}, "error", f"the producer returned an invalid array name {key!r}"
        value = np.asarray(value)
        if key.startswith(ATTRIBUTE_PREFIX):
            if value.ndim:
                return {}, {}, "error", f"attribute {key} must be a scalar, not {value.shape}"
            attributes[key.removeprefix(ATTRIBUTE_PREFIX)] = value.item()
            continue
        if value.dtype.kind not in "biufc":
            return {}, {}, "error", f"{key} has dtype {value.dtype}, not a number type"
        arrays[key] = value
    names = getattr(producer, "names", None)
    if "x" in arrays and names is not None and arrays["x"].shape != (len(names),):
        return {}, {}, "error", f"x has shape {arrays['x'].shape}, expected ({len(names)},)"
    for key, value in arrays.items():
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            if key == "x" and names is not None:
                bad = [names[i] for i in np.flatnonzero(~np.isfinite(value))]
                return {}, {}, "nonfinite", f"non-finite summaries: {', '.join(bad)}"
            return {}, {}, "nonfinite", f"{key} holds {np.count_nonzero(~np.isfinite(value))} "\
                                        "non-finite values"
    return arrays, attributes, None, ""
