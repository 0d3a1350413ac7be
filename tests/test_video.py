"""Decoding sampled frames: every real clip in shared/videos, true frame counts, first stream, rotation, resize,
both backends agreeing, exact frame selection on a generated clip, errors, and reading from S3 (moto)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.data import video
from pipeline.data.sampling import segment_indices
from pipeline.data.video import DecodeError, VideoInfo, decode_clip, probe

CORRUPT = "decord__corrupted.mp4"
# Frames PyAV decodes, from shared/videos/MANIFEST.md (checked against the file in a test below).
TRUE_FRAMES = {
    "decord__flipping_a_pancake.mkv": 310,
    "decord__unordered.mov": 4,
    "decord__video_90.mov": 3,
    "mmaction2__demo_demo.mp4": 280,
    "mmaction2__tests_data_rawvideo_dataset_part_0.mp4": 32,
    "mmaction2__tests_data_test.avi": 164,
    "mmaction2__tests_data_test.mp4": 300,
    "mmaction2__tools_data_skeleton_S001C001P001R001A001_rgb.avi": 103,
    "moviepy__big_buck_bunny_432_433.webm": 24,
    "moviepy__chaplin.mp4": 241,
    "moviepy__doc_medias_example.mp4": 50,
    "moviepy__fire2.mp4": 25,
    "moviepy__no_duration.webm": 74,
    "moviepy__smpte-2997.mp4": 251,
    "moviepy__test_video.mp4": 5,
    "moviepy__transparent.webm": 150,
    "moviepy__video_with_failing_audio.mp4": 280,
    "torchcodec__av1_video.mkv": 125,
    "torchcodec__discard_first_keyframe.mp4": 25,
    "torchcodec__h264_10bits.mp4": 30,
    "torchcodec__h265_video.mp4": 10,
    "torchcodec__nasa_13013.mp4": 325,
    "torchcodec__nasa_13013_rotated.mp4": 17,
    "torchcodec__test_non_zero_start.mp4": 12,
    "torchcodec__testsrc2_mpeg4.avi": 30,
    "torchcodec__testsrc2_mpeg4.mp4": 1,
    "torchcodec__testsrc2_odd_height_and_width_vp9.mp4": 25,
    "torchcodec__testsrc2_odd_width_mpeg2.mp4": 10,
    "torchcodec__testsrc2_vp8.webm": 30,
    "torchcodec__testsrc2_vp9.webm": 30,
}
ROTATED = ["decord__video_90.mov", "torchcodec__nasa_13013_rotated.mp4"]
# Clips decord cannot be trusted with (fails, over-counts, or reads another stream): PyAV must take them.
PYAV_ONLY = {
    "moviepy__no_duration.webm",
    "torchcodec__av1_video.mkv",
    "torchcodec__discard_first_keyframe.mp4",
    "torchcodec__nasa_13013.mp4",
}


def _val8(n: int) -> np.ndarray:
    return segment_indices(n, 8, "val")


def _manifest_rows(shared_videos: Path) -> dict[str, list[str]]:
    rows = {}
    for line in (shared_videos / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0].endswith((".mp4", ".mov", ".mkv", ".avi", ".webm")):
            rows[cells[0]] = cells
    return rows


def test_expected_counts_match_manifest(shared_videos: Path) -> None:
    rows = _manifest_rows(shared_videos)
    assert len(rows) == 31 and rows[CORRUPT][9] == "ERR"
    assert {name: int(cells[9]) for name, cells in rows.items() if name != CORRUPT} == TRUE_FRAMES


# --- every real clip ---


@pytest.mark.parametrize("name", sorted(TRUE_FRAMES))
def test_every_clip_decodes_8_val_frames(shared_videos: Path, name: str) -> None:
    seen: list[int] = []

    def sample(n: int) -> np.ndarray:
        seen.append(n)
        return _val8(n)

    frames, info = decode_clip(str(shared_videos / name), sample, short_side=96)
    assert seen == [TRUE_FRAMES[name]] and info.num_frames == TRUE_FRAMES[name]
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == 8 and frames.shape[-1] == 3
    height, width = frames.shape[1:3]
    assert min(height, width) == 96
    assert abs(max(height, width) - 96 * max(info.height, info.width) / min(info.height, info.width)) <= 0.5
    assert (height > width) == (info.height > info.width)  # aspect kept, orientation included
    assert info.backend == ("pyav" if name in PYAV_ONLY else "decord")
    assert info.fps > 0


def test_corrupt_clip_raises_decode_error_naming_the_file(shared_videos: Path) -> None:
    # Its header and first frame are fine; decoding further fails. auto falls back from decord to PyAV, which fails too.
    for backend, reason in [("auto", "corrupt"), ("pyav", "corrupt"), ("decord", "decord_failed")]:
        with pytest.raises(DecodeError) as err:
            decode_clip(str(shared_videos / CORRUPT), _val8, backend=backend)
        assert err.value.reason == reason and CORRUPT in str(err.value)


@pytest.mark.parametrize(
    "name",
    [
        "torchcodec__testsrc2_odd_height_and_width_vp9.mp4",
        "torchcodec__testsrc2_odd_width_mpeg2.mp4",
        "torchcodec__h264_10bits.mp4",
        "torchcodec__h265_video.mp4",
        "moviepy__test_video.mp4",
        "torchcodec__testsrc2_mpeg4.mp4",
    ],
)
def test_native_size_matches_manifest(shared_videos: Path, name: str) -> None:
    width, height = map(int, _manifest_rows(shared_videos)[name][7].split("x"))
    frames, info = decode_clip(str(shared_videos / name), _val8)
    assert frames.shape == (8, height, width, 3) and frames.dtype == np.uint8
    assert (info.height, info.width) == (height, width)
    assert probe(str(shared_videos / name)) == VideoInfo(info.num_frames, height, width, info.fps, "pyav")


def test_one_by_one_clip_has_its_colours(shared_videos: Path) -> None:
    # 5 frames of 1x1: red, green, blue, black, white (decord fails on it at native size; PyAV takes over)
    frames, info = decode_clip(str(shared_videos / "moviepy__test_video.mp4"), np.arange(5))
    assert info.backend == "pyav"
    expected = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [255, 255, 255]]
    assert np.abs(frames[:, 0, 0].astype(int) - expected).max() <= 3


# --- frame counts and streams ---


def _all_frames_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_overcounted_clip_uses_true_count_and_right_frames(shared_videos: Path) -> None:
    path = shared_videos / "torchcodec__discard_first_keyframe.mp4"  # header and decord say 30, 25 decode
    truth = _all_frames_pyav(path)
    assert len(truth) == 25 and probe(str(path)).num_frames == 25
    frames, info = decode_clip(str(path), np.array([24, 20, 0, 12]))
    assert info.num_frames == 25
    assert np.array_equal(frames, truth[[24, 20, 0, 12]])
    with pytest.raises(IndexError):
        decode_clip(str(path), [25])
    with pytest.raises(DecodeError, match="30 frames, 25 decode"):
        decode_clip(str(path), [20], backend="decord")


def test_two_stream_clip_reads_first_video_stream(shared_videos: Path) -> None:
    path = shared_videos / "torchcodec__nasa_13013.mp4"  # stream 0: 320x180, 325 frames; stream 3: 480x270, 390
    frames, info = decode_clip(str(path), _val8)
    assert (info.num_frames, info.height, info.width) == (325, 180, 320)
    assert frames.shape == (8, 180, 320, 3)
    with av.open(str(path)) as container:  # the first stream's frame 0, by PyAV
        first = next(container.decode(container.streams.video[0])).to_ndarray(format="rgb24")
    assert np.array_equal(decode_clip(str(path), [0])[0][0], first)
    with pytest.raises(DecodeError, match="several video streams"):
        decode_clip(str(path), [0], backend="decord")


def test_fewer_decodable_frames_than_counted_resamples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _brightness_clip(tmp_path)  # 20 frames
    real_scan = video._scan

    def overcounting_scan(f, uri):  # a container whose packets promise 30 frames but only 20 decode
        scan = real_scan(f, uri)
        return video._Scan(video.replace(scan.info, num_frames=30), scan.quarter_turns, scan.video_streams)

    monkeypatch.setattr(video, "_scan", overcounting_scan)
    seen: list[int] = []

    def sample(n: int) -> np.ndarray:
        seen.append(n)
        return _val8(n)

    frames, info = decode_clip(str(path), sample)  # decord disagrees with 30 too, so PyAV decodes and re-samples
    assert seen == [30, 20] and info.num_frames == 20 and info.backend == "pyav"
    assert np.allclose(frames.mean(axis=(1, 2, 3)), _brightness(_val8(20)), atol=4)


# --- rotation and backends ---


@pytest.mark.parametrize("name", ROTATED)
@pytest.mark.parametrize("short_side", [None, 100])
def test_rotation_same_for_both_backends(shared_videos: Path, name: str, short_side: int | None) -> None:
    uri = str(shared_videos / name)
    by_pyav, info_p = decode_clip(uri, _val8, short_side, backend="pyav")
    by_decord, info_d = decode_clip(uri, _val8, short_side, backend="decord")
    assert (info_p.backend, info_d.backend) == ("pyav", "decord")
    assert info_p.height > info_p.width  # landscape coded, portrait displayed
    assert by_pyav.shape == by_decord.shape and by_pyav.shape[1] > by_pyav.shape[2]
    diff = np.abs(by_pyav.astype(int) - by_decord).mean()
    upside_down = np.abs(by_pyav[:, ::-1, ::-1].astype(int) - by_decord).mean()
    assert diff < 3 and upside_down > 3 * max(diff, 1.0)  # orientation, not just shape


@pytest.mark.parametrize("name", sorted(set(TRUE_FRAMES) - PYAV_ONLY))
def test_backends_return_the_same_frames(shared_videos: Path, name: str) -> None:
    uri = str(shared_videos / name)
    by_pyav, _ = decode_clip(uri, _val8, 64, backend="pyav")
    by_decord, _ = decode_clip(uri, _val8, 64, backend="decord")
    assert by_pyav.shape == by_decord.shape
    # Same frames, small differences from colour conversion and scaling (10-bit and mpeg2 differ most, ~3).
    assert np.abs(by_pyav.astype(int) - by_decord).mean(axis=(1, 2, 3)).max() < 5


# --- exact frame selection on a generated clip ---


def _brightness(i: np.ndarray | int) -> np.ndarray:
    return 10 + 12 * np.asarray(i)


def _brightness_clip(tmp_path: Path, n: int = 20) -> Path:
    """n frames, 64x48 h264 with B-frames and a keyframe every 5 frames; frame i is flat grey _brightness(i)."""
    path = tmp_path / "brightness.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "1", "bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 5
        for i in range(n):
            rgb = np.full((48, 64, 3), _brightness(i), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
def test_requested_indices_return_exactly_those_frames(tmp_path: Path, backend: str) -> None:
    path = _brightness_clip(tmp_path)
    wanted = np.array([[19, 0, 7], [7, 13, 2]])  # unsorted, repeated, 2-D (multi-clip)
    frames, info = decode_clip(str(path), wanted, backend=backend)
    assert info.num_frames == 20 and (info.height, info.width) == (48, 64)
    assert frames.shape == (2, 3, 48, 64, 3)
    assert np.abs(frames.mean(axis=(2, 3, 4)) - _brightness(wanted)).max() < 3
    resized, _ = decode_clip(str(path), segment_indices(20, 8, "test", num_clips=2), 24, backend=backend)
    assert resized.shape == (2, 8, 24, 32, 3)
    assert np.abs(resized.mean(axis=(2, 3, 4)) - _brightness(segment_indices(20, 8, "test", num_clips=2))).max() < 3


def test_resampling_to_a_lower_fps_keeps_the_nearest_earlier_frames(tmp_path: Path) -> None:
    """The prepare job's --fps: a 10 fps clip at 4 fps keeps frames 0, 2, 5, 7, ... (every 2.5th, floored)."""
    path = _brightness_clip(tmp_path)
    info, frames = video.iter_frames(str(path), fps=4)
    kept = np.stack(list(frames))
    assert info.fps == 4 and kept.shape == (8, 48, 64, 3)
    assert np.abs(kept.mean(axis=(1, 2, 3)) - _brightness(np.array([0, 2, 5, 7, 10, 12, 15, 17]))).max() < 3
    info, frames = video.iter_frames(str(path), fps=30)  # never more frames than the source has
    assert info.fps == pytest.approx(10) and len(list(frames)) == 20


# --- errors ---


def test_not_a_video_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video at all\n" * 100)
    with pytest.raises(DecodeError) as err:
        decode_clip(str(path), _val8)
    assert err.value.reason == "unreadable" and "notes.mp4" in str(err.value)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DecodeError) as err:
        probe(str(tmp_path / "missing.mp4"))
    assert err.value.reason == "unreadable" and "missing.mp4" in str(err.value)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = (np.sin(np.arange(800) / 5) * 3000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(DecodeError) as err:
        decode_clip(str(path), _val8)
    assert err.value.reason == "no_video_stream"


def test_bad_arguments(tmp_path: Path) -> None:
    path = str(_brightness_clip(tmp_path))
    with pytest.raises(ValueError):
        decode_clip(path, _val8, backend="opencv")
    with pytest.raises(ValueError):
        decode_clip(path, _val8, short_side=0)
    with pytest.raises(IndexError):
        decode_clip(path, [-1])
    with pytest.raises(IndexError):
        decode_clip(path, [])


# --- S3 (moto server on 127.0.0.1) ---

S3_CLIPS = ["decord__video_90.mov", "torchcodec__av1_video.mkv", "torchcodec__discard_first_keyframe.mp4"]


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_clips(moto_endpoint: str, shared_videos: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3
    import s3fs

    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep an older endpoint
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="clips")
    for name in S3_CLIPS:
        client.upload_file(str(shared_videos / name), "clips", f"videos/{name}")
    yield "s3://clips/videos"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("name", S3_CLIPS)
def test_decode_from_s3_equals_local(s3_clips: str, shared_videos: Path, name: str) -> None:
    remote, remote_info = decode_clip(f"{s3_clips}/{name}", _val8, short_side=64)
    local, local_info = decode_clip(str(shared_videos / name), _val8, short_side=64)
    assert remote_info == local_info and remote_info.num_frames == TRUE_FRAMES[name]
    assert np.array_equal(remote, local)


def test_missing_s3_key_is_unreadable(s3_clips: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_clip(f"{s3_clips}/nope.mp4", _val8)
    assert err.value.reason == "unreadable" and "nope.mp4" in str(err.value)
