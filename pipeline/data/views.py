"""The test views of a video, as the paper evaluates: K clips x 1 or 3 crops, shared by evaluation and prediction.

Clips: TSN segment sampling, clip j taking the point (j + 0.5) / K of the way through every segment (K = 1 is the
validation clip). Crops: 1 is the validation centre crop at the model's frame size; 3 are squares of the full short
side at the left, centre and right (top, middle, bottom of a portrait video): the authors' full-resolution test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.sampling import segment_indices
from pipeline.data.transforms import ClipTransform
from pipeline.data.video import decode_clip

CROPS = (1, 3)


@dataclass(frozen=True)
class ViewSpec:
    """Which views of a video a model scores."""

    num_segments: int  # frames per clip
    short_side: int  # frames are resized at decode so their short side is this
    frame_size: int  # the model's training crop: the side of the single centre crop
    clips: int = 1
    crops: int = 1

    def __post_init__(self) -> None:
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.crops not in CROPS:
            raise ValueError(f"crops must be one of {CROPS}, got {self.crops}")

    @classmethod
    def of_model(cls, config: dict, clips: int = 1, crops: int = 1, num_segments: int | None = None) -> ViewSpec:
        """The views of a registered model (its pyfunc `config`), optionally at another clip length."""
        segments = num_segments or config["model"]["num_segments"]
        return cls(segments, config["short_side"], config["frame_size"], clips, crops)

    @property
    def views(self) -> int:
        return self.clips * self.crops

    @property
    def side(self) -> int:
        return self.frame_size if self.crops == 1 else self.short_side

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """uint8 views of one video: [views, num_segments, side, side, 3], clip-major then crop."""
        return (self.views, self.num_segments, self.side, self.side, 3)


def full_side_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(top, left, side, side) of three squares of the short side along the long side: start, centre, end."""
    side = min(height, width)
    if width >= height:
        return [(0, left, side, side) for left in (0, (width - side) // 2, width - side)]
    return [(top, 0, side, side) for top in (0, (height - side) // 2, height - side)]


def views_of_frames(frames: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """uint8 frames [clips, T, H, W, 3] (decoded at the short side) -> views [clips * crops, T, side, side, 3]."""
    if spec.crops == 1:
        centre = ClipTransform(spec.frame_size, train=False)
        return np.stack([centre(clip) for clip in frames])
    views = []
    for clip in frames:
        for top, left, h, w in full_side_boxes(*clip.shape[1:3]):
            views.append(clip[:, top : top + h, left : left + w])
    out = np.stack(views)
    if out.shape[2:4] != (spec.side, spec.side):  # a video smaller than the short side stays at its own size
        out = np.stack([ClipTransform(spec.side, train=False)(view) for view in out])
    return np.ascontiguousarray(out)


def video_views(uri: str, spec: ViewSpec) -> np.ndarray:
    """Decode a video's views (only the sampled frames); raises pipeline.data.video.DecodeError."""
    frames, _ = decode_clip(
        uri, lambda n: segment_indices(n, spec.num_segments, "test", num_clips=spec.clips), spec.short_side
    )
    return views_of_frames(frames, spec)
