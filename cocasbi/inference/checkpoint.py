"""Checkpoints of trained NPE estimators: state dicts plus JSON metadata, one file.

The file is a ``torch.save`` of a plain dictionary ``{"format", "metadata" (a JSON string),
"state_dicts" (one per ensemble member)}``: only tensors, strings and containers, so it loads
with ``torch.load(weights_only=True)`` on CPU, whatever device trained it. The metadata holds
the estimator and training configuration, the prior box, θ names, the summary names and k,
the z-score statistics, the training summaries and package versions. Loading rebuilds each
network with :func:`~cocasbi.inference.estimator.rebuild_estimator` from the stored
configuration (never from a name read from the file) and checks a layout against it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cocasbi import __version__
from cocasbi.inference.box import box_from_dict, box_to_dict
from cocasbi.inference.config import EstimatorConfig, TrainingConfig
from cocasbi.inference.estimator import TrainedEstimator, make_posterior, rebuild_estimator
from cocasbi.inference.observation import check_layout
from cocasbi.io.atomic import atomic_path
from cocasbi.prior import BoxPrior

FORMAT = "cocasbi-npe-checkpoint"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the packages a checkpoint depends on."""
    import sbi
    import torch

    return {"cocasbi": __version__, "sbi": sbi.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass
class Checkpoint:
    """Trained estimators with everything needed to use them on an observation."""

    estimator: EstimatorConfig
    training: TrainingConfig
    prior: BoxPrior
    names: tuple[str, ...]
    k: np.ndarray | None
    members: list[TrainedEstimator]
    extra: dict

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.prior.names)

    def posterior(self, device: str = "cpu"):
        """The sbi posterior (ensemble if several members) on the checkpoint's prior box."""
        return make_posterior([m.net for m in self.members], self.prior.to_sbi(device))

    def check_layout(self, names, k=None, what: str = "observation") -> None:
        """ValueError naming the first difference between this layout and ``names`` / ``k``."""
        check_layout(names, k, self.names, self.k, what)

    def metadata(self) -> dict:
        return {"estimator": self.estimator.model_dump(mode="json"),
                "training": self.training.model_dump(mode="json"),
                "prior": box_to_dict(self.prior), "parameters": list(self.parameters),
                "names": list(self.names), "k": None if self.k is None else self.k.tolist(),
                "members": [{"zscore": m.zscore, "summary": m.summary} for m in self.members],
                "versions": versions(), "extra": self.extra}


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (an existing good file is replaced only on success)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "metadata": json.dumps(ckpt.metadata()),
               "state_dicts": [{k: v.detach().cpu() for k, v in m.net.state_dict().items()}
                               for m in ckpt.members]}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint on CPU with ``weights_only=True`` and rebuild its networks.

    Raises ValueError for a file that is not a checkpoint, of another format version, or
    written by a different major version of sbi (whose networks may not rebuild the same).
    """
    import sbi
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of a damaged or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                         f"{err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cocasbi NPE checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {payload.get('format_version')}, "
                         f"this cocasbi reads {FORMAT_VERSION}")
    meta = json.loads(payload["metadata"])
    saved = meta["versions"]["sbi"]
    if saved.split(".")[:2] != sbi.__version__.split(".")[:2]:
        raise ValueError(f"{path} was written with sbi {saved}, this is sbi {sbi.__version__}; "
                         "retrain or install the same sbi version")
    estimator = EstimatorConfig.model_validate(meta["estimator"])
    members = [TrainedEstimator(rebuild_estimator(estimator, m["zscore"], sd), m["zscore"],
                                m["summary"])
               for m, sd in zip(meta["members"], payload["state_dicts"], strict=True)]
    return Checkpoint(estimator, TrainingConfig.model_validate(meta["training"]),
                      box_from_dict(meta["prior"]), tuple(meta["names"]),
                      None if meta["k"] is None else np.asarray(meta["k"]), members,
                      meta.get("extra", {}))
