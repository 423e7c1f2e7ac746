"""Prior boxes of inference: :class:`~cocasbi.prior.BoxPrior`, also over non-cosmological names.

Inference works on any uniform box: the cosmological ones of campaigns (``BoxPrior``) and those
of test models such as the Gaussian-field amplitude ``A``. :class:`ParameterBox` is a
``BoxPrior`` whose names need not be cosmological parameters; both turn into sbi's
``BoxUniform`` with ``to_sbi()`` and are stored in checkpoints by :func:`box_to_dict`.
"""

from __future__ import annotations

import numpy as np

from cocasbi.prior import BoxPrior


class ParameterBox(BoxPrior):
    """Uniform box ``low <= θ <= high`` over arbitrary parameter names (float64 bounds)."""

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"prior names {names} must be non-empty and distinct")
        if low.shape != (len(names),) or high.shape != (len(names),):
            raise ValueError(f"prior bounds must have {len(names)} entries each")
        for name, lo, hi in zip(names, low, high, strict=True):
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"prior {name}: need finite low={lo} < high={hi}")
        low.flags.writeable = high.flags.writeable = False
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)


def box_to_dict(box: BoxPrior) -> dict:
    """JSON form: ``{"kind": "cosmology" | "parameters", "names", "low", "high"}``."""
    kind = "parameters" if isinstance(box, ParameterBox) else "cosmology"
    return {"kind": kind, "names": list(box.names), "low": box.low.tolist(),
            "high": box.high.tolist()}


def box_from_dict(data: dict) -> BoxPrior:
    """Inverse of :func:`box_to_dict`."""
    cls = {"cosmology": BoxPrior, "parameters": ParameterBox}.get(data.get("kind"))
    if cls is None:
        raise ValueError(f"unknown prior kind {data.get('kind')!r}")
    return cls(tuple(data["names"]), np.asarray(data["low"]), np.asarray(data["high"]))
