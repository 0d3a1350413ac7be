"""TSN segment sampling: segments, centres, multi-clip views, short clips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.sampling import segment_indices


def _segment_bounds(num_frames: int, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.arange(num_segments + 1) * num_frames / num_segments
    return np.floor(edges[:-1]), np.floor(edges[1:])


@pytest.mark.parametrize("num_frames", [8, 30, 100, 301])
def test_train_indices_lie_in_their_segments(num_frames: int) -> None:
    rng = np.random.default_rng(0)
    start, end = _segment_bounds(num_frames, 8)
    for _ in range(50):
        idx = segment_indices(num_frames, 8, "train", rng)
        assert idx.shape == (8,) and idx.dtype == np.int64
        assert np.all(idx >= start) and np.all(idx < end)


def test_train_indices_vary_with_rng_and_cover_each_segment() -> None:
    rng = np.random.default_rng(1)
    draws = np.stack([segment_indices(80, 8, "train", rng) for _ in range(400)])
    assert len({tuple(d) for d in draws}) > 300  # random, not a fixed pattern
    # Every frame of every 10-frame segment gets picked: uniform over the segment, tail included.
    assert set(draws.ravel().tolist()) == set(range(80))


def test_train_is_reproducible_for_a_seed() -> None:
    a = segment_indices(100, 8, "train", np.random.default_rng(7))
    b = segment_indices(100, 8, "train", np.random.default_rng(7))
    c = segment_indices(100, 8, "train", np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_val_takes_segment_centres() -> None:
    assert segment_indices(80, 8, "val").tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    # TSM _get_val_indices: int(tick / 2 + tick * x)
    tick = 301 / 8
    assert segment_indices(301, 8, "val").tolist() == [int(tick / 2 + tick * x) for x in range(8)]


def test_val_ignores_rng() -> None:
    rng = np.random.default_rng(3)
    assert np.array_equal(segment_indices(50, 8, "val", rng), segment_indices(50, 8, "val"))


def test_test_views_shape_and_distinct_offsets() -> None:
    views = segment_indices(100, 8, "test", num_clips=2)
    assert views.shape == (2, 8) and views.dtype == np.int64
    tick = 100 / 8
    assert views[0].tolist() == [int(tick * (x + 0.25)) for x in range(8)]
    assert views[1].tolist() == [int(tick * (x + 0.75)) for x in range(8)]
    three = segment_indices(300, 8, "test", num_clips=3)
    assert three.shape == (3, 8)
    assert np.all(np.diff(three, axis=0) > 0)  # each view is shifted later within every segment
    assert len({tuple(v) for v in three}) == 3


def test_single_test_view_equals_val() -> None:
    assert np.array_equal(segment_indices(77, 8, "test", num_clips=1)[0], segment_indices(77, 8, "val"))


@pytest.mark.parametrize("num_frames", [1, 3, 4, 5, 7])
@pytest.mark.parametrize("mode", ["train", "val", "test"])
def test_short_clips_repeat_indices_within_range(num_frames: int, mode: str) -> None:
    idx = segment_indices(num_frames, 8, mode, np.random.default_rng(0), num_clips=2)
    assert idx.shape == ((2, 8) if mode == "test" else (8,))
    rows = idx.reshape(-1, 8)
    assert np.all(rows >= 0) and np.all(rows < num_frames)
    assert np.all(np.diff(rows, axis=1) >= 0)  # sorted, hence repeats are adjacent
    assert len(set(rows[0].tolist())) <= num_frames  # fewer frames than segments: some repeat
    if num_frames > 1 and mode != "train":
        assert rows[0, 0] < rows[0, -1]  # still spread over the clip, not all frame 0


def test_one_frame_clip_is_all_zero() -> None:
    for mode in ("train", "val", "test"):
        assert not segment_indices(1, 8, mode, np.random.default_rng(0), num_clips=3).any()


@pytest.mark.parametrize("num_frames", [8, 9, 15, 16, 17, 64, 1000])
def test_indices_sorted_and_in_range_for_all_modes(num_frames: int) -> None:
    rng = np.random.default_rng(0)
    for mode in ("train", "val", "test"):
        idx = segment_indices(num_frames, 8, mode, rng, num_clips=4).reshape(-1, 8)
        assert np.all((idx >= 0) & (idx < num_frames))
        assert np.all(np.diff(idx, axis=1) > 0)  # at least one frame per segment: strictly increasing


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0, "num_segments": 8, "mode": "val"},
        {"num_frames": -3, "num_segments": 8, "mode": "train"},
        {"num_frames": 10, "num_segments": 0, "mode": "val"},
        {"num_frames": 10, "num_segments": 8, "mode": "bogus"},
        {"num_frames": 10, "num_segments": 8, "mode": "test", "num_clips": 0},
    ],
)
def test_bad_input_raises_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        segment_indices(**kwargs)
