"""TSN segment sampling: which frame indices of a clip a training or evaluation sample uses.

The clip [0, num_frames) is split into `num_segments` equal segments (float boundaries, so no tail frames are
silently dropped) and one frame is taken from each:

- "train": a uniformly random frame inside each segment (TSN/TSM `_sample_indices`);
- "val":   the centre frame of each segment (TSM `_get_val_indices`);
- "test":  `num_clips` views, clip j taking the point (j + 0.5) / num_clips of the way through each segment
           (TSM's twice_sample generalised; num_clips=1 is exactly "val").

Clips shorter than num_segments repeat indices instead of failing, and every result is sorted and inside
[0, num_frames), so a decoder never sees an index it cannot serve.
"""

from __future__ import annotations

import numpy as np

MODES = ("train", "val", "test")


def segment_indices(
    num_frames: int,
    num_segments: int,
    mode: str,
    rng: np.random.Generator | None = None,
    num_clips: int = 1,
) -> np.ndarray:
    """int64 frame indices: shape [num_segments] for train/val, [num_clips, num_segments] for test."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    tick = num_frames / num_segments  # segment length in frames, may be < 1 for short clips
    segments = np.arange(num_segments)
    if mode == "train":
        rng = rng if rng is not None else np.random.default_rng()
        start = np.floor(segments * tick).astype(np.int64)
        # max(.., start + 1): a short clip's segment may hold no whole frame; then it repeats its start frame.
        end = np.maximum(np.floor((segments + 1) * tick).astype(np.int64), start + 1)
        indices = rng.integers(start, end)
    elif mode == "val":
        indices = np.floor(tick * (segments + 0.5))
    else:
        shifts = (np.arange(num_clips)[:, None] + 0.5) / num_clips
        indices = np.floor(tick * (segments[None, :] + shifts))
    # The clip guards against float round-off only; the formulas above already stay in range.
    return np.clip(indices, 0, num_frames - 1).astype(np.int64)
