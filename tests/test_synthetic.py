"""The synthetic MMiT-layout dataset: layout, real h264 files, determinism, events that do what their names say,
time-reversed pairs that differ only in frame order, distractors without labels, caching and atomicity."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from pipeline.data import synthetic
from pipeline.data.synthetic import EVENTS, Sprite, SyntheticSpec, class_names, generate_mmit, temporal_class_pairs

SMALL = SyntheticSpec(num_train=24, num_val=12, frames=16, seed=3)
HARD = SyntheticSpec(num_train=20, num_val=10, frames=16, seed=3, max_events=2, distractors=2, appearance=False,
                     dark=True, noise=10, sprite_radius=(0.06, 0.09), length_jitter=1 / 3)  # fmt: skip


def read_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return generate_mmit(tmp_path_factory.mktemp("synth") / "mmit", SMALL)


@pytest.mark.parametrize("spec", [SMALL, HARD], ids=["embedded", "hard"])
def test_layout_and_format(spec, tmp_path):
    root = generate_mmit(tmp_path / "mmit", spec)
    names = class_names(spec)
    assert names[: len(EVENTS)] == EVENTS and len(names) == len(EVENTS) + 4 * spec.appearance
    assert read_rows(root / "moments_categories.txt") == [[name, str(i)] for i, name in enumerate(names)]
    paths, event_counts = [], []
    for csv_name, count in [("trainingSet.csv", spec.num_train), ("validationSet.csv", spec.num_val)]:
        rows = read_rows(root / csv_name)
        assert len(rows) == count
        for rel, *ids in rows:
            labels = [int(i) for i in ids]
            assert labels == sorted(set(labels)) and all(0 <= i < len(names) for i in labels)
            events = [i for i in labels if i < len(EVENTS)]
            assert 1 <= len(events) <= spec.max_events
            assert Path(rel).parent.name in [names[i] for i in events] and rel.endswith(".mp4")  # folder: an event
            assert (root / "videos" / rel).is_file()
            paths.append(rel)
            event_counts.append(len(events))
    assert len(set(paths)) == len(paths)  # train and val never share a file
    assert (max(event_counts) == 2) == (spec.max_events == 2)  # two events per clip happen when allowed
    assert sorted(p.name for p in root.iterdir()) == [
        "moments_categories.txt",
        "synthetic.json",
        "trainingSet.csv",
        "validationSet.csv",
        "videos",
    ]


def test_files_are_real_h264(small_root: Path):
    for rel, *_ in read_rows(small_root / "validationSet.csv")[:4]:
        path = small_root / "videos" / rel
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert (stream.width, stream.height) == (SMALL.size, SMALL.size)
            declared = stream.frames
        frames = decode(path)
        assert frames.shape[0] == declared and abs(declared - SMALL.frames) <= max(
            1, round(SMALL.frames * SMALL.length_jitter)
        )
        reader = decord.VideoReader(str(path))
        assert len(reader) == declared
        assert reader.get_batch([0, declared - 1]).asnumpy().shape == (2, SMALL.size, SMALL.size, 3)


def test_deterministic_by_seed(small_root: Path, tmp_path: Path):
    again = generate_mmit(tmp_path / "again", SMALL)
    for name in ["trainingSet.csv", "validationSet.csv", "moments_categories.txt"]:
        assert (again / name).read_text() == (small_root / name).read_text()
    rel = read_rows(small_root / "trainingSet.csv")[0][0]
    np.testing.assert_array_equal(decode(again / "videos" / rel), decode(small_root / "videos" / rel))

    other = generate_mmit(tmp_path / "other", dataclasses.replace(SMALL, seed=4))
    assert (other / "trainingSet.csv").read_text() != (small_root / "trainingSet.csv").read_text()


def one_sprite(event: int, seed: int, spec: SyntheticSpec = SMALL, **changes) -> synthetic.ClipParams:
    """A clip of a single sprite doing `event`, without noise (so that frames compare exactly)."""
    sprite = dataclasses.replace(synthetic.sample_sprite(np.random.default_rng(seed), event, spec), **changes)
    return synthetic.ClipParams(frames=16, size=spec.size, sprites=(sprite,), dark=spec.dark, noise=0.0)


def sprite_mask(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.abs(frame.astype(int) - background.astype(int)).sum(axis=-1) > 40


@pytest.mark.parametrize("event", [EVENTS.index(f) for f, _ in synthetic.PAIRS], ids=[f for f, _ in synthetic.PAIRS])
def test_forward_events_do_what_their_names_say(event):
    params = one_sprite(event, seed=event, colour="yellow", shape="bar" if event == 8 else "square")
    frames = synthetic.render_clip(params, seed=0)
    empty = synthetic.render_clip(dataclasses.replace(params, sprites=()), seed=0)[0]
    first, last = (sprite_mask(frames[i], empty) for i in (0, -1))
    ys, xs = np.nonzero(last)
    y0s, x0s = np.nonzero(first)
    name = EVENTS[event]
    if name == "moving_right":
        assert xs.mean() > x0s.mean() + 5
    elif name == "moving_down":
        assert ys.mean() > y0s.mean() + 5
    elif name == "growing":
        assert last.sum() > 2 * first.sum()
    elif name == "brightening":
        assert frames[-1][last].mean() > frames[0][last].mean() + 40  # the sprite stays put: the same pixels
    else:  # turning clockwise: on screen (y down), the bar's end nearest +x swings towards +y
        angle = params.sprites[0].angle
        assert angle[1] > angle[0]
        centre = np.array(params.sprites[0].centre[:2])
        tip = [np.array([np.cos(a), np.sin(a)]) for a in angle]
        assert tip[0][0] * tip[1][1] - tip[0][1] * tip[1][0] > 0  # positive in image coordinates: clockwise on screen
        for a, mask in ((angle[0], first), (angle[1], last)):
            probe = centre + 1.3 * params.sprites[0].radius[0] * np.array([np.cos(a), np.sin(a)])
            assert mask[int(probe[1]), int(probe[0])]  # the bar lies along its angle


@pytest.mark.parametrize("pair", temporal_class_pairs())
@pytest.mark.parametrize("spec", [SMALL, HARD], ids=["embedded", "hard"])
def test_temporal_pairs_differ_only_in_frame_order(pair: tuple[int, int], spec: SyntheticSpec):
    forward, backward = pair
    for seed in range(3):
        # Direction never changes the sampled geometry, so the two classes share one distribution of frame sets.
        a_sprite = synthetic.sample_sprite(np.random.default_rng(seed), forward, spec)
        b_sprite = synthetic.sample_sprite(np.random.default_rng(seed), backward, spec)
        assert dataclasses.replace(a_sprite, event=backward) == b_sprite
        a = synthetic.render_clip(one_sprite(forward, seed, spec), seed)
        b = synthetic.render_clip(one_sprite(backward, seed, spec), seed)
        assert a.shape == (16, spec.size, spec.size, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(b, a[::-1])
        assert sorted(f.tobytes() for f in a) == sorted(f.tobytes() for f in b)  # same multiset of frames
        assert not np.array_equal(a, b)  # ... in a different order
        assert np.array_equal(a.mean(axis=0), b.mean(axis=0))  # so anything frame-averaged is identical
        assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 0.3  # and something does change over time


def test_encoded_pairs_decode_to_reversed_frames(tmp_path: Path):
    """The property holds on the h264 files too (all-intra, constant quantiser), not only on the renderings."""
    for forward, backward in temporal_class_pairs():
        for event in (forward, backward):
            synthetic.write_video(tmp_path / f"{event}.mp4", synthetic.render_clip(one_sprite(event, forward), 11))
        a, b = decode(tmp_path / f"{forward}.mp4"), decode(tmp_path / f"{backward}.mp4")
        np.testing.assert_array_equal(b, a[::-1])
        source = synthetic.render_clip(one_sprite(forward, forward), 11).astype(int)
        assert np.abs(a.astype(int) - source).mean() < 6  # and close to what was rendered


def test_distractors_wobble_without_a_direction_or_a_label():
    rng = np.random.default_rng(0)
    params = synthetic.sample_clip(rng, [0], dataclasses.replace(HARD, distractors=2))
    distractors = [s for s in params.sprites if s.event is None]
    assert all(s.centre[:2] == s.centre[2:] and s.wobble[0] > 0 for s in distractors)  # no net travel
    assert synthetic.clip_labels(params, HARD) == [0]
    counts = {len([s for s in synthetic.sample_clip(rng, [0], HARD).sprites if s.event is None]) for _ in range(40)}
    assert counts == {0, 1, 2}


def test_appearance_labels_match_pixels():
    names = class_names(SMALL)
    for colour in synthetic.COLOURS:
        for shape in synthetic.SHAPES:
            params = one_sprite(0, 0, colour=colour, shape=shape)
            labels = synthetic.clip_labels(params, SMALL)
            assert [names[i] for i in labels] == ["moving_right"] + [n for n in (colour, shape) if n in names]
            assert synthetic.clip_labels(params, HARD) == [0]  # no appearance labels in the temporal benchmark
    params = one_sprite(2, 0, colour="red", shape="disc")  # moving down
    frames = synthetic.render_clip(params, 0)
    sprite: Sprite = params.sprites[0]
    r, g, b = frames[0, int(sprite.centre[1]), int(sprite.centre[0])].astype(int)
    assert r > g + 80 and r > b + 80  # the sprite's centre is red


def test_cache_reuses_and_spec_change_regenerates(tmp_path: Path):
    root = generate_mmit(tmp_path / "mmit", SMALL)
    marker, video = root / "synthetic.json", next((root / "videos").rglob("*.mp4"))
    stamps = (marker.stat().st_mtime_ns, video.stat().st_mtime_ns)
    start = time.perf_counter()
    assert generate_mmit(root, SMALL) == root
    assert time.perf_counter() - start < 0.5
    assert (marker.stat().st_mtime_ns, video.stat().st_mtime_ns) == stamps

    before = (root / "trainingSet.csv").read_text()
    generate_mmit(root, dataclasses.replace(SMALL, num_train=16, num_val=8))
    assert len(read_rows(root / "trainingSet.csv")) == 16 and (root / "trainingSet.csv").read_text() != before
    assert '"num_train": 16' in marker.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmit"]  # no temporary siblings left behind


def test_interrupted_generation_leaves_nothing_complete(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real_write = synthetic.write_video

    def failing_write(path, frames):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        real_write(path, frames)

    root = tmp_path / "mmit"
    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "write_video", failing_write)
        with pytest.raises(KeyboardInterrupt):
            generate_mmit(root, SMALL)
    assert list(tmp_path.iterdir()) == []  # neither the root nor the half-written temporary folder

    # An interrupted regeneration keeps the previous complete dataset as it was, and is not taken for the new one.
    old = SyntheticSpec(num_train=8, num_val=8, frames=16, seed=1)
    generate_mmit(root, old)
    old_csv = (root / "trainingSet.csv").read_text()
    calls["n"] = 0
    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "write_video", failing_write)
        with pytest.raises(KeyboardInterrupt):
            generate_mmit(root, SMALL)
    assert (root / "trainingSet.csv").read_text() == old_csv and '"seed": 1' in (root / "synthetic.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmit"]
    generate_mmit(root, SMALL)  # and the next uninterrupted call completes it
    assert len(read_rows(root / "trainingSet.csv")) == SMALL.num_train


def test_cli(tmp_path: Path, capsys):
    synthetic.main([str(tmp_path / "cli"), "--num-train", "8", "--num-val", "4", "--seed", "2", "--max-events", "2"])
    assert "wrote 8+4 clips" in capsys.readouterr().out
    assert len(read_rows(tmp_path / "cli" / "validationSet.csv")) == 4
    assert '"max_events": 2' in (tmp_path / "cli" / "synthetic.json").read_text()


@pytest.mark.integration
def test_default_size_timing_and_balance(tmp_path: Path, capsys):
    start = time.perf_counter()
    root = generate_mmit(tmp_path / "full")
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[synthetic] generated {SyntheticSpec.num_train}+{SyntheticSpec.num_val} clips in {seconds:.1f} s")
    for csv_name in ["trainingSet.csv", "validationSet.csv"]:
        counts = np.bincount([int(i) for _, *ids in read_rows(root / csv_name) for i in ids], minlength=14)
        assert counts.min() > 0, f"every class should appear in {csv_name}: {counts}"
        events = counts[: len(EVENTS)]
        assert events.max() - events.min() <= 1  # one event per clip by default, balanced over the events
