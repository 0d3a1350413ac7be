"""Frame shards: a dataset's videos decoded once into Parquet files of JPEG frames (written by jobs/prepare_mmit.py),
so that training decodes a few small JPEGs per clip instead of seeking through a video every epoch.

    DEST/format.json                      format, version and settings; written last: the dataset is complete
    DEST/trainingSet.csv, validationSet.csv, moments_categories.txt   MMiT annotations of the videos written
    DEST/index.parquet                    path, split, shard, row_group, num_frames of every video written
    DEST/skipped.csv                      path, split, reason of every video left out
    DEST/shards/<split>-NNNNN.parquet     one row group per video (SCHEMA), a few hundred MB per file

A clip is addressed as `DEST/shards/<split>-NNNNN.parquet#<row group>`: reading it costs one ranged read of that
video's row group (each file's footer is cached per thread), then only the sampled JPEGs are decoded.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.data import storage
from pipeline.data.annotations import Manifest, read_mmit
from pipeline.data.video import DecodeError, Sample, VideoInfo, frame_indices, target_size

FORMAT = "tin-frame-shards"
VERSION = 1
FORMAT_FILE = "format.json"
INDEX_FILE = "index.parquet"
SKIPPED_FILE = "skipped.csv"
ROW_MARK = ".parquet#"  # in a URI: a video's row in a shard file
SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # the video's row in its split's annotations (source dataset)
        ("path", pa.string()),  # relative to the source dataset's videos/
        ("labels", pa.list_(pa.int32())),
        ("num_frames", pa.int32()),
        ("fps", pa.float64()),
        ("height", pa.int32()),  # stored frame size (short side resized at prepare time)
        ("width", pa.int32()),
        ("frames", pa.list_(pa.binary())),  # one JPEG per frame
    ]
)
_OPEN_FILES = 64  # shard footers kept per process


def is_row(uri: str) -> bool:
    return ROW_MARK in uri


def row_uri(shard_uri: str, row_group: int) -> str:
    return f"{shard_uri}#{row_group}"


def is_shard_dataset(root: str) -> bool:
    return storage.exists(storage.join(root, FORMAT_FILE))


def read_format(root: str) -> dict:
    """The dataset's format file, checked: a ValueError names the file when it is not one this code reads."""
    uri = storage.join(root, FORMAT_FILE)
    with storage.open_uri(uri) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{uri}: not a JSON format file ({e})") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{uri}: format {meta.get('format')!r} version {meta.get('version')!r}; this code reads "
                         f"{FORMAT!r} version {VERSION}")  # fmt: skip
    return meta


def read_split(root: str, split: str) -> Manifest:
    """A split's manifest: the MMiT annotations of `root`; for a shard dataset each record points at its row."""
    manifest = read_mmit(root, split)
    if not is_shard_dataset(root):
        return manifest
    read_format(root)
    rows = {path: (uri, frames) for path, uri, frames in index_rows(root, split)}
    videos = storage.join(root, "videos")
    records = []
    for record in manifest.records:
        path = record.uri[len(videos) + 1 :]
        if path not in rows:
            raise ValueError(f"{storage.join(root, INDEX_FILE)}: no row for {split} video {path!r}")
        uri, frames = rows[path]
        records.append(replace(record, uri=uri, num_frames=frames))
    return replace(manifest, records=records)


def index_rows(root: str, split: str | None = None) -> list[tuple[str, str, int]]:
    """(relative path, row URI, frame count) of every video written, or of one split's."""
    with storage.open_uri(storage.join(root, INDEX_FILE)) as f:
        table = pq.read_table(f).to_pydict()
    shards = storage.join(root, "shards")
    return [
        (path, row_uri(storage.join(shards, f"{shard}.parquet"), group), frames)
        for path, s, shard, group, frames in zip(
            table["path"], table["split"], table["shard"], table["row_group"], table["num_frames"], strict=True
        )
        if split is None or s == split
    ]


_local = threading.local()  # open shard files per thread: a ParquetFile must not be read by two threads at once


def _shard_file(uri: str) -> pq.ParquetFile:
    files: OrderedDict[str, pq.ParquetFile] = _local.__dict__.setdefault("files", OrderedDict())
    shard = files.get(uri)
    if shard is None:
        fs, path = storage.filesystem(uri)
        # Row groups are read at random: no read-ahead past the one wanted.
        f = fs.open(path, "rb", **({"cache_type": "none"} if storage.is_remote(uri) else {}))
        shard = pq.ParquetFile(f, pre_buffer=True)
        files[uri] = shard
        if len(files) > _OPEN_FILES:
            files.popitem(last=False)[1].close()
    else:
        files.move_to_end(uri)
    return shard


def decode_row_clip(uri: str, sample: Sample, short_side: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """decode_clip for a shard row: the frames `sample(num_frames)` selects, decoded from their JPEGs (batched),
    resized when the stored short side differs from `short_side`. Raises DecodeError like decode_clip."""
    from torchvision.io import ImageReadMode, decode_jpeg

    shard_uri, _, group = uri.rpartition("#")
    try:
        table = _shard_file(shard_uri).read_row_group(int(group), columns=["num_frames", "fps", "frames"])
    except (OSError, ValueError, IndexError) as e:
        _local.__dict__.get("files", {}).pop(shard_uri, None)
        raise DecodeError(uri, "unreadable", str(e)[:200]) from e
    num_frames = table["num_frames"][0].as_py()
    jpegs = table["frames"].chunk(0)[0].values
    indices = frame_indices(sample, num_frames)
    wanted, inverse = np.unique(indices.ravel(), return_inverse=True)
    data = [torch.frombuffer(bytearray(jpegs[int(i)].as_py()), dtype=torch.uint8) for i in wanted]
    try:
        frames = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))
    except RuntimeError as e:
        raise DecodeError(uri, "corrupt", str(e)[:200]) from e
    height, width = frames.shape[-2:]
    size = target_size(height, width, short_side)
    if size != (height, width):
        frames = torch.nn.functional.interpolate(frames.float(), size=size, mode="bilinear", antialias=True)
        frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    out = frames[torch.from_numpy(inverse)].permute(0, 2, 3, 1).numpy()
    info = VideoInfo(num_frames, height, width, table["fps"][0].as_py(), "jpeg")
    return out.reshape(indices.shape + out.shape[1:]), info
