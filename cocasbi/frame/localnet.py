"""The local frame network: unpadded dilated 3³ convolutions on a once-padded periodic field.

Used by :mod:`cocasbi.frame.local` (the frame model around it) and allow-listed in
:mod:`cocasbi.frame.checkpoint`. Depends on torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocalNet(nn.Module):
    """A stack of unpadded 3³ convolutions (LeakyReLU(0.2), residual between hidden layers)
    and a 1³ output layer initialised to zero.

    ``forward`` maps (B, C_in, n + 2R, …) to (B, C_out, n, …) with R = :attr:`radius`;
    :meth:`periodic` pads a periodic field once by R and applies it.
    """

    def __init__(self, in_channels: int = 20, out_channels: int = 12, hidden: int = 24,
                 dilations=(1, 2, 4, 1)):
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations {dilations} must be one or more integers >= 1")
        self.hparams = {"in_channels": in_channels, "out_channels": out_channels,
                        "hidden": hidden, "dilations": list(dilations)}
        self.dilations = dilations
        self.convs = nn.ModuleList(
            nn.Conv3d(in_channels if i == 0 else hidden, hidden, 3, dilation=d)
            for i, d in enumerate(dilations))
        self.act = nn.LeakyReLU(0.2)
        self.out = nn.Conv3d(hidden, out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def radius(self) -> int:
        """Receptive radius [cells]: the padding the input needs on each side."""
        return sum(self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.convs[0](x))
        for conv, d in zip(self.convs[1:], self.dilations[1:], strict=True):
            h = h[..., d:-d, d:-d, d:-d] + self.act(conv(h))
        return self.out(h)

    def periodic(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a periodic field x (B, C_in, n, n, n), n > R: one circular pad."""
        r = self.radius
        if min(x.shape[-3:]) <= r:
            raise ValueError(f"grid {tuple(x.shape[-3:])} is not larger than the network's "
                             f"receptive radius {r}")
        return self(F.pad(x, (r,) * 6, mode="circular"))
