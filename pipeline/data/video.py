"""Decode only the sampled frames of a clip, resized at decode, from a local path or s3:// URI.

One call does the whole job, opening the file once:

    frames, info = decode_clip(uri, lambda n: segment_indices(n, 8, "val"), short_side=256)

Why it is built this way (the clips in shared/videos show each case):

- A short PyAV pass first picks the FIRST video stream, counts the frames that actually decode (demuxing only,
  without discarded pre-roll or empty packets; headers and decord's len() can over-count) and reads the rotation.
  The caller's `sample(num_frames)` only ever sees that count.
- decord then decodes the sampled frames (fast seeking, resize in its filter graph) where it can be trusted: a
  single video stream (it picks the "best" stream, not the first) and a frame count equal to ours (when it
  over-counts, its index -> frame mapping shifts with the access pattern).
- Anything else, or any decord failure (av1, a webm without duration, a 1x1 clip), goes to PyAV, which decodes
  up to the last wanted frame; if fewer frames decode than were counted, the clip is re-sampled with the true count.
- Both backends return the displayed orientation (rotation applied) and read the same file object, rewound between
  passes; nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO

import av
import numpy as np

from pipeline.data.storage import open_uri

BACKENDS = ("auto", "decord", "pyav")
# One decoding thread per reader: the pipeline runs one decoder per CPU, and FFmpeg's frame threads would only contend.
DECORD_THREADS = 1
Sample = Callable[[int], np.ndarray] | np.ndarray | Sequence[int]


class DecodeError(Exception):
    """A clip that cannot be decoded; `reason` is short and machine-friendly, the message names the file."""

    def __init__(self, uri: str, reason: str, detail: str = "") -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"cannot decode {uri}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # frames that decode in the first video stream
    height: int  # displayed (rotation applied), before any resize
    width: int
    fps: float
    backend: str  # the backend that produced the frames ("pyav" for probe, which counts with PyAV)


@dataclass(frozen=True)
class _Scan:
    info: VideoInfo
    quarter_turns: int  # counter-clockwise quarter turns that display the frame upright (np.rot90's k)
    video_streams: int


class _DecordUnsuitable(Exception):
    """decord opened the file but cannot be trusted with it; the caller falls back to PyAV."""


def probe(uri: str) -> VideoInfo:
    """Frame count, displayed size and fps of the first video stream, without decoding more than one frame."""
    with _open(uri) as f:
        return _scan(f, uri).info


def decode_clip(
    uri: str, sample: Sample, short_side: int | None = None, backend: str = "auto"
) -> tuple[np.ndarray, VideoInfo]:
    """Decode the frames `sample(num_frames)` selects (or fixed indices) as uint8 RGB, shape indices.shape + (H, W, 3).

    short_side resizes at decode so min(H, W) == short_side, keeping the aspect ratio (None: native size).
    backend "auto" uses decord where it is trustworthy and PyAV otherwise; "decord"/"pyav" force one (tests).
    A frame-shard row (`....parquet#N`, pipeline.data.shards) is served from its stored JPEGs instead.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if ".parquet#" in uri:  # a video's row in a frame shard (pipeline.data.shards)
        from pipeline.data.shards import decode_row_clip

        return decode_row_clip(uri, sample, short_side)
    with _open(uri) as f:
        scan = _scan(f, uri)
        info = scan.info
        indices = frame_indices(sample, info.num_frames)
        size = target_size(info.height, info.width, short_side)
        if backend != "pyav":
            try:
                frames = _decord_frames(f, indices, size, scan)
                return frames, replace(info, backend="decord")
            except Exception as e:  # decord raises its own error types, asserts and RuntimeErrors alike
                if backend == "decord":
                    raise DecodeError(uri, "decord_failed", str(e)[:200]) from e
        frames, decoded = _pyav_frames(f, uri, indices, size, scan.quarter_turns)
        if frames is None:  # fewer frames decode than packets were counted: re-sample with the true count
            info = replace(info, num_frames=decoded)
            indices = frame_indices(sample, decoded)
            frames, _ = _pyav_frames(f, uri, indices, size, scan.quarter_turns)
            if frames is None:
                raise DecodeError(uri, "unstable_frame_count")
        return frames, replace(info, backend="pyav")


def iter_frames(
    uri: str, short_side: int | None = None, fps: float | None = None
) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """(info, frames): every frame of the first video stream in order (or those nearest a resampling to `fps`), as
    uint8 RGB [H, W, 3] resized to `short_side`, rotation applied; one at a time, so a long video never sits whole
    in memory. `info.num_frames` is the count the scan found; decoding may end earlier (a truncated stream)."""
    f = _open(uri)
    try:
        scan = _scan(f, uri)
    except BaseException:
        f.close()
        raise
    info = scan.info
    keep = None
    if fps and info.fps and fps < info.fps:
        keep = set(np.floor(np.arange(0, info.num_frames * fps / info.fps) * info.fps / fps).astype(int).tolist())
        info = replace(info, fps=fps)
    height, width = target_size(info.height, info.width, short_side)
    if scan.quarter_turns % 2:  # np.rot90 follows the reformat, so scale to the pre-rotation size
        height, width = width, height

    def frames() -> Iterator[np.ndarray]:
        with f:
            f.seek(0)
            try:
                with av.open(f, mode="r") as container:
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    for number, frame in enumerate(container.decode(stream)):
                        if keep is None or number in keep:
                            rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR")
                            yield np.ascontiguousarray(np.rot90(rgb.to_ndarray(), scan.quarter_turns))
            except (av.FFmpegError, ValueError) as e:
                raise DecodeError(uri, "corrupt", str(e)) from _cause(f, e)

    return info, frames()


def _open(uri: str) -> IO[bytes]:
    try:
        return _Recording(open_uri(uri, "rb"))
    except (OSError, ValueError) as e:
        raise DecodeError(uri, "unreadable", str(e)) from e


class _Recording:
    """A file object that keeps the last error its reads raised: PyAV reports a failed read as its own error, and
    the storage error behind it (a store away or throttling) must still reach the caller as the cause."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: BaseException | None = None

    def read(self, *args):
        return self._recorded(self._f.read, *args)

    def seek(self, *args):
        return self._recorded(self._f.seek, *args)

    def _recorded(self, call, *args):
        try:
            return call(*args)
        except Exception as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _cause(f, error: BaseException) -> BaseException:
    """The storage error behind a decoder's error, when a read failed; else the decoder's own."""
    return getattr(f, "error", None) or error


def _scan(f: IO[bytes], uri: str) -> _Scan:
    """One PyAV pass: first video stream, its decodable frame count, fps and rotation."""
    try:
        container = av.open(f, mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError(uri, "unreadable", str(e)) from _cause(f, e)
    with container:
        if not container.streams.video:
            raise DecodeError(uri, "no_video_stream")
        stream = container.streams.video[0]
        count, first = 0, None
        try:
            for packet in container.demux(stream):
                if first is None:  # pre-roll packets are decoded too: the decoder needs them, then drops their output
                    first = next(iter(packet.decode()), None)
                if packet.size and not packet.is_discard:
                    count += 1
        except (av.FFmpegError, ValueError) as e:
            raise DecodeError(uri, "corrupt", str(e)) from _cause(f, e)
        if first is None or count == 0:
            raise DecodeError(uri, "no_frames")
        turns = round((first.rotation or 0) / 90) % 4
        height, width = (first.width, first.height) if turns % 2 else (first.height, first.width)
        rate = stream.average_rate or stream.guessed_rate
        info = VideoInfo(count, height, width, float(rate) if rate else 0.0, "pyav")
        return _Scan(info, turns, len(container.streams.video))


def frame_indices(sample: Sample, num_frames: int) -> np.ndarray:
    indices = np.asarray(sample(num_frames) if callable(sample) else sample, dtype=np.int64)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= num_frames:
        raise IndexError(f"frame indices must be non-empty and within [0, {num_frames})")
    return indices


def target_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side scaled to short_side, aspect kept."""
    if short_side is None:
        return height, width
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def _decord_frames(f: IO[bytes], indices: np.ndarray, size: tuple[int, int], scan: _Scan) -> np.ndarray:
    import decord  # imported lazily: PyAV alone is enough to probe

    if scan.video_streams > 1:
        raise _DecordUnsuitable("several video streams: decord may not read the first")
    height, width = size
    f.seek(0)
    # width/height are the displayed (rotated) output size; decord scales in its filter graph.
    reader = decord.VideoReader(f, width=width, height=height, num_threads=DECORD_THREADS)
    if len(reader) != scan.info.num_frames:
        raise _DecordUnsuitable(f"decord counts {len(reader)} frames, {scan.info.num_frames} decode")
    flat = reader.get_batch(indices.ravel().tolist()).asnumpy()
    if flat.shape != (indices.size, height, width, 3) or flat.dtype != np.uint8:
        raise _DecordUnsuitable(f"decord returned {flat.shape} {flat.dtype}")
    return flat.reshape(indices.shape + (height, width, 3))


def _pyav_frames(
    f: IO[bytes], uri: str, indices: np.ndarray, size: tuple[int, int], quarter_turns: int
) -> tuple[np.ndarray | None, int]:
    """Decode sequentially up to the last wanted index. (frames, decoded) or (None, decoded) when the stream ends
    before the last wanted index, decoded then being the true frame count."""
    wanted = set(indices.ravel().tolist())
    last = max(wanted)
    # np.rot90 follows the reformat, so scale to the pre-rotation size.
    height, width = size[::-1] if quarter_turns % 2 else size
    picked: dict[int, np.ndarray] = {}
    decoded = 0
    f.seek(0)
    try:
        with av.open(f, mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # the whole prefix is decoded, so let FFmpeg use several threads
            for number, frame in enumerate(container.decode(stream)):
                decoded = number + 1
                if number in wanted:
                    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR")
                    picked[number] = np.rot90(rgb.to_ndarray(), quarter_turns)
                if number >= last:
                    break
    except (av.FFmpegError, ValueError) as e:
        raise DecodeError(uri, "corrupt", str(e)) from _cause(f, e)
    if decoded == 0:
        raise DecodeError(uri, "no_frames")
    if len(picked) < len(wanted):
        return None, decoded
    out = np.stack([picked[i] for i in indices.ravel().tolist()])
    return out.reshape(indices.shape + out.shape[1:]), decoded
