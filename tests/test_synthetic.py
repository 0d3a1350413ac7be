"""The synthetic MMiT-layout dataset: layout, real h264 files, determinism, the temporal pairs, caching, atomicity."""

from __future__ import annotations

import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from pipeline.data import synthetic
from pipeline.data.synthetic import SyntheticSpec, class_names, generate_mmit, temporal_class_pairs

SMALL = SyntheticSpec(num_train=24, num_val=12, frames=16, seed=3)


def read_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return generate_mmit(tmp_path_factory.mktemp("synth") / "mmit", SMALL)


def test_layout_and_format(small_root: Path):
    names = class_names()
    assert 8 <= len(names) <= 12 and len(set(names)) == len(names)
    categories = read_rows(small_root / "moments_categories.txt")
    assert categories == [[name, str(i)] for i, name in enumerate(names)]
    motion_ids = {i for pair in temporal_class_pairs() for i in pair}
    paths = []
    for csv_name, count in [("trainingSet.csv", SMALL.num_train), ("validationSet.csv", SMALL.num_val)]:
        rows = read_rows(small_root / csv_name)
        assert len(rows) == count
        for rel, *ids in rows:
            labels = [int(i) for i in ids]
            assert labels and all(0 <= i < len(names) for i in labels) and len(set(labels)) == len(labels)
            assert len(motion_ids.intersection(labels)) == 1  # exactly one motion, and it names the folder
            assert rel == f"{names[labels[0]]}/{Path(rel).name}" and rel.endswith(".mp4")
            assert (small_root / "videos" / rel).is_file()
            paths.append(rel)
        assert any(len(ids) > 1 for _, *ids in rows), "expected multi-label rows"
    assert len(set(paths)) == len(paths)  # train and val never share a file
    assert sorted(p.name for p in small_root.iterdir()) == [
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
        assert frames.shape[0] == declared and abs(declared - SMALL.frames) <= max(1, SMALL.frames // 6)
        reader = decord.VideoReader(str(path))
        assert len(reader) == declared
        assert reader.get_batch([0, declared - 1]).asnumpy().shape == (2, SMALL.size, SMALL.size, 3)


def test_deterministic_by_seed(small_root: Path, tmp_path: Path):
    again = generate_mmit(tmp_path / "again", SMALL)
    for name in ["trainingSet.csv", "validationSet.csv", "moments_categories.txt"]:
        assert (again / name).read_text() == (small_root / name).read_text()
    rel = read_rows(small_root / "trainingSet.csv")[0][0]
    np.testing.assert_array_equal(decode(again / "videos" / rel), decode(small_root / "videos" / rel))

    other = generate_mmit(tmp_path / "other", SyntheticSpec(num_train=24, num_val=12, frames=16, seed=4))
    assert (other / "trainingSet.csv").read_text() != (small_root / "trainingSet.csv").read_text()


@pytest.mark.parametrize("pair", temporal_class_pairs())
def test_temporal_pairs_differ_only_in_frame_order(pair: tuple[int, int]):
    forward, backward = pair
    for seed in range(3):
        # Direction never changes the sampled geometry, so the two classes share one distribution of frame sets.
        params = synthetic.sample_clip(np.random.default_rng(seed), forward, SMALL)
        assert synthetic.sample_clip(np.random.default_rng(seed), backward, SMALL) == params
        a = synthetic.render_clip(forward, params, seed)
        b = synthetic.render_clip(backward, params, seed)
        assert a.shape == (params.frames, SMALL.size, SMALL.size, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(b, a[::-1])
        assert sorted(f.tobytes() for f in a) == sorted(f.tobytes() for f in b)  # same multiset of frames
        assert not np.array_equal(a, b)  # ... in a different order
        assert np.array_equal(a.mean(axis=0), b.mean(axis=0))  # so anything frame-averaged is identical
        assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 2  # and something does change over time


def test_encoded_pairs_decode_to_reversed_frames(tmp_path: Path):
    """The property holds on the h264 files too (all-intra, constant quantiser), not only on the renderings."""
    for forward, backward in temporal_class_pairs():
        params = synthetic.sample_clip(np.random.default_rng(forward), forward, SMALL)
        for motion in (forward, backward):
            synthetic.write_video(tmp_path / f"{motion}.mp4", synthetic.render_clip(motion, params, 11))
        a, b = decode(tmp_path / f"{forward}.mp4"), decode(tmp_path / f"{backward}.mp4")
        np.testing.assert_array_equal(b, a[::-1])
        source = synthetic.render_clip(forward, params, 11).astype(int)
        assert np.abs(a.astype(int) - source).mean() < 6  # and close to what was rendered


def test_appearance_labels_match_pixels():
    names = class_names()
    params = synthetic.sample_clip(np.random.default_rng(0), 0, SMALL)
    for colour in synthetic.COLOURS:
        for shape in synthetic.SHAPES:
            p = synthetic.ClipParams(**{**params.__dict__, "colour": colour, "shape": shape})
            labels = synthetic.clip_labels(0, p)
            assert labels[0] == 0 and [names[i] for i in labels[1:]] == [n for n in (colour, shape) if n in names]
    frames = synthetic.render_clip(0, synthetic.ClipParams(**{**params.__dict__, "colour": "red"}), 0)
    x, y = int(params.centre[0]), int(params.centre[1])
    r, g, b = frames[0, y, x].astype(int)
    assert r > g + 80 and r > b + 80  # the object's centre is red


def test_cache_reuses_and_spec_change_regenerates(tmp_path: Path):
    root = generate_mmit(tmp_path / "mmit", SMALL)
    marker, video = root / "synthetic.json", next((root / "videos").rglob("*.mp4"))
    stamps = (marker.stat().st_mtime_ns, video.stat().st_mtime_ns)
    start = time.perf_counter()
    assert generate_mmit(root, SMALL) == root
    assert time.perf_counter() - start < 0.5
    assert (marker.stat().st_mtime_ns, video.stat().st_mtime_ns) == stamps

    before = (root / "trainingSet.csv").read_text()
    generate_mmit(root, SyntheticSpec(num_train=16, num_val=8, frames=16, seed=3))
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
    synthetic.main([str(tmp_path / "cli"), "--num-train", "8", "--num-val", "4", "--seed", "2"])
    assert "wrote 8+4 clips" in capsys.readouterr().out
    assert len(read_rows(tmp_path / "cli" / "validationSet.csv")) == 4


def test_default_size_timing_and_balance(tmp_path: Path, capsys):
    start = time.perf_counter()
    root = generate_mmit(tmp_path / "full")
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[synthetic] generated {SyntheticSpec.num_train}+{SyntheticSpec.num_val} clips in {seconds:.1f} s")
    for csv_name in ["trainingSet.csv", "validationSet.csv"]:
        counts = np.bincount([int(i) for _, *ids in read_rows(root / csv_name) for i in ids], minlength=12)
        assert counts.min() > 0, f"every class should appear in {csv_name}: {counts}"
        motion = counts[: len(synthetic.MOTIONS)]
        assert motion.max() - motion.min() <= 1  # motions are balanced
