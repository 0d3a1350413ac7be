"""Temporal modules placed on the residual branch of each ResNet block: TIN's interlace and TSM's shift.

TIN follows the authors' released code (deepcs233/TIN, ops/temporal_interlace.py), which produced the published
numbers. Where the paper's text says otherwise, the code wins and the difference is an option here:
- Offset range: the code uses 4 * (sigmoid - 0.5), i.e. (-2, 2); the paper (Eq. 3) says (sigmoid - 0.5) * T, i.e.
  (-T/2, T/2). `offset_range="paper"` selects the latter.
- OffsetNet: the code is Conv1d(fold -> 1, k=3) -> Linear(T, T) -> ReLU -> Linear(T, groups); the paper's "FC T->T->G"
  counts the reverse groups in G, but only the learned groups have outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tin_core.ops import temporal_interlace, temporal_shift

# The authors' code starts every offset at 0.5 frames (fc2's bias at logit(0.625) = 0.5108 with the code's range).
AUTHORS_OFFSET_INIT = 0.5
# Offsets of one frame: every group reads its neighbour frame whole, as TSM's shift does (the models' default).
TSM_OFFSET_INIT = 1.0


class OffsetNet(nn.Module):
    """Per-clip offsets of the learned groups from the temporal descriptor z [N, fold, T] -> [N, groups].

    `offset_init` is where the offsets start (fc2's bias); it must lie inside the range, (-2, 2) or (-T/2, T/2).
    `zero_init` zeroes fc2's weights so that no clip starts elsewhere (the authors keep torch's random init)."""

    def __init__(
        self,
        channels: int,
        num_segments: int,
        groups: int = 2,
        offset_range: str = "code",
        offset_init: float = AUTHORS_OFFSET_INIT,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if offset_range not in ("code", "paper"):
            raise ValueError(f"offset_range must be 'code' or 'paper', got {offset_range!r}")
        self.scale = 4.0 if offset_range == "code" else float(num_segments)
        if not abs(offset_init) < self.scale / 2:
            raise ValueError(
                f"offset_init {offset_init} is outside the offset range (-{self.scale / 2:g}, {self.scale / 2:g})"
            )
        self.conv = nn.Conv1d(channels, 1, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(num_segments, num_segments)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(num_segments, groups)
        nn.init.constant_(self.fc2.bias, math.log((0.5 + offset_init / self.scale) / (0.5 - offset_init / self.scale)))
        if zero_init:  # every clip starts exactly at offset_init; fc2's weights learn first, then the layers below
            nn.init.zeros_(self.fc2.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.conv(z).squeeze(1)  # [N, T]
        raw = self.fc2(self.relu(self.fc1(s)))  # [N, groups]
        return self.scale * (torch.sigmoid(raw) - 0.5)


class WeightNet(nn.Module):
    """Per-frame weights of the learned groups in (0, 2), from z [N, fold, T] -> [N, T, groups].

    The bias starts at 0, so weights start near 2 * sigmoid(0) = 1; `zero_init` zeroes the conv's weights too, so
    that every frame of every clip starts at exactly 1 (the authors keep torch's random init)."""

    def __init__(self, channels: int, groups: int = 2, zero_init: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, groups, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv.bias)
        if zero_init:
            nn.init.zeros_(self.conv.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(self.conv(z)).transpose(1, 2)  # [N, T, groups]


class TemporalInterlace(nn.Module):
    """TIN on [N*T, C, H, W]: the first C // shift_div channels are split into groups, shifted in time by learned
    fractional offsets and re-weighted per frame; the other channels pass unchanged.

    The authors' setting is `groups=2, reverse=True, shift_div=4`: 4 groups of fold/4 channels with offsets
    [+o0, +o1, -o0, -o1] and weights [w0, w1, w0, w1]. `groups` and `reverse` are the variants of the paper's Table 5.
    """

    def __init__(
        self,
        channels: int,
        num_segments: int,
        shift_div: int = 4,
        groups: int = 2,
        reverse: bool = True,
        offset_range: str = "code",
        offset_init: float = AUTHORS_OFFSET_INIT,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.num_segments = num_segments
        self.fold = channels // shift_div
        self.reverse = reverse
        total_groups = groups * (2 if reverse else 1)
        if self.fold == 0 or self.fold % total_groups != 0:
            raise ValueError(
                f"TemporalInterlace: {channels} channels // shift_div {shift_div} = {self.fold} interlaced channels, "
                f"which {total_groups} groups (groups={groups}, reverse={reverse}) do not divide"
            )
        self.offset_net = OffsetNet(self.fold, num_segments, groups, offset_range, offset_init, zero_init)
        self.weight_net = WeightNet(self.fold, groups, zero_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        clip = x.view(nt // self.num_segments, self.num_segments, c, h, w)  # [N, T, C, H, W]
        z = clip[:, :, : self.fold].mean(dim=(3, 4)).transpose(1, 2)  # [N, fold, T]
        offsets = self.offset_net(z)  # [N, groups]
        weights = self.weight_net(z)  # [N, T, groups]
        if self.reverse:
            offsets = torch.cat([offsets, -offsets], dim=1)
            weights = torch.cat([weights, weights], dim=2)
        # One pass: the first `fold` channels interlaced, the rest copied (no split, copy and concatenation).
        return temporal_interlace(clip, offsets, weights, channels=self.fold).view(nt, c, h, w)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold={self.fold}, reverse={self.reverse}"


class TemporalShift(nn.Module):
    """TSM on [N*T, C, H, W]: 1/fold_div of the channels take the next frame, 1/fold_div the previous one."""

    def __init__(self, num_segments: int, fold_div: int = 8) -> None:
        super().__init__()
        self.num_segments = num_segments
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt = x.shape[0]
        clip = x.reshape(nt // self.num_segments, self.num_segments, *x.shape[1:])  # [N, T, C, H, W]
        return temporal_shift(clip, self.fold_div).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold_div={self.fold_div}"


class TemporalThenConv(nn.Module):
    """A block's first conv with a temporal module in front, so only the residual branch sees the temporal mixing
    (the identity path keeps the original features), as in both TSM and TIN."""

    def __init__(self, temporal: nn.Module, conv: nn.Conv2d) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.temporal(x))
