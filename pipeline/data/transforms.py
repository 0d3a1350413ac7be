"""Clip transforms, kept in uint8 until the training worker: TSM's multi-scale crop for training, a centre crop for
evaluation, an optional horizontal flip, and normalisation to float on the worker.

One crop (and flip) per clip, shared by all its frames, so that motion between frames is not distorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tin_core.inputs import IMAGENET_MEAN, IMAGENET_STD, centre_crop_box, crop_and_fit, normalize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MULTI_SCALES", "ClipTransform", "centre_crop_box", "multi_scale_crop_box",
           "normalize"]  # fmt: skip

# TSM/TIN's GroupMultiScaleCrop: crop sides as fractions of the short side.
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


def _crop_sides(short: int, crop_size: int, scales: tuple[float, ...]) -> list[int]:
    # Sides within 3 px of the output size snap to it, as in TSM.
    sides = [int(short * s) for s in scales]
    return [crop_size if abs(side - crop_size) < 3 else side for side in sides]


def _fixed_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """TSM's 13 fixed crop positions: corners, centre, edge middles and quarter points."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    return [
        (0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs),
        (0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
        (ws, hs), (3 * ws, hs), (ws, 3 * hs), (3 * ws, 3 * hs),
    ]  # fmt: skip


def multi_scale_crop_box(
    height: int, width: int, crop_size: int, rng: np.random.Generator, scales: tuple[float, ...] = MULTI_SCALES
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random multi-scale crop: sides from `scales` (fractions of the short side), aspect
    distortion of at most one scale step, at one of 13 fixed positions."""
    sides = _crop_sides(min(height, width), crop_size, scales)
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    crop_w, crop_h = max(1, min(crop_w, width)), max(1, min(crop_h, height))
    left, top = _fixed_offsets(width, height, crop_w, crop_h)[rng.integers(13)]
    return top, left, crop_h, crop_w


@dataclass(frozen=True)
class ClipTransform:
    """uint8 [T, H, W, 3] -> uint8 [T, crop_size, crop_size, 3].

    train: a crop of a side from `scales` at a random fixed position, resized to crop_size, then an optional flip.
    eval: centre crop (resized to crop_size if the frame is smaller). `flip` must stay off for direction-sensitive
    datasets (Something-Something, Jester, our synthetic moving-left/right classes), where a flip swaps the label.
    """

    crop_size: int
    train: bool = False
    flip: bool = False
    scales: tuple[float, ...] = MULTI_SCALES

    def __call__(self, clip: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _, height, width, _ = clip.shape
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            top, left, h, w = multi_scale_crop_box(height, width, self.crop_size, rng, self.scales)
        else:
            top, left, h, w = centre_crop_box(height, width, self.crop_size)
        frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)
        cropped = crop_and_fit(frames, (top, left, h, w), self.crop_size)
        if self.train and self.flip and rng.random() < 0.5:
            cropped = cropped.flip(-1)
        return cropped.permute(0, 2, 3, 1).contiguous().numpy()
