"""The prepare job: decode every video of an MMiT dataset once into frame shards (layout: pipeline.data.shards).

    summary = prepare("s3://bucket/mmit", "s3://bucket/mmit-shards", PrepareSpec(short_side=256))

One Ray task per shard (a fixed slice of a split's annotations, so a rerun plans the same shards). A shard is done
when its summary file exists, written after its Parquet file; a rerun skips done shards and redoes the rest. A
Parquet file never appears half-written under its final name: local files are written aside and renamed, S3
objects only appear once their upload completes. Videos that cannot be decoded are left out with their reason.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from pipeline.bars import progress_bar
from pipeline.data import shards, storage
from pipeline.data.annotations import read_mmit
from pipeline.data.annotations.mmit import MMIT_CATEGORIES, MMIT_SPLITS
from pipeline.data.video import DecodeError, iter_frames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareSpec:
    short_side: int = 256  # stored frames' short side (training resizes further if it asks for less)
    fps: float | None = None  # resample to this frame rate (None: every frame)
    quality: int = 90  # JPEG quality
    videos_per_shard: int = 128  # a few hundred MB per file for short clips at a short side of 256


@dataclass(frozen=True)
class PrepareSummary:
    videos: int
    written: int
    skipped: list[tuple[str, str, str]]  # (split, path, reason)
    bytes_in: int
    bytes_out: int
    resumed_shards: int

    def line(self) -> str:
        return (f"prepared {self.videos} videos: {self.written} written, {len(self.skipped)} skipped, "
                f"{self.bytes_in / 1e9:.3f} GB -> {self.bytes_out / 1e9:.3f} GB")  # fmt: skip


def shard_plan(root: str, videos_per_shard: int) -> list[dict]:
    """One item per shard: its name and its videos (manifest index, URI, relative path, labels), both splits."""
    if videos_per_shard < 1:
        raise ValueError(f"--videos-per-shard must be >= 1, got {videos_per_shard}")
    videos_dir = storage.join(root, "videos")
    plan = []
    for split in MMIT_SPLITS:
        records = read_mmit(root, split).records
        for start in range(0, len(records), videos_per_shard):
            videos = [{"index": i, "uri": r.uri, "path": r.uri[len(videos_dir) + 1 :], "labels": list(r.labels)}
                      for i, r in enumerate(records[start : start + videos_per_shard], start)]  # fmt: skip
            plan.append({"split": split, "shard": f"{split}-{start // videos_per_shard:05d}",
                         "videos": json.dumps(videos)})  # fmt: skip
    return plan


def encode_video(uri: str, spec: PrepareSpec) -> tuple[list[bytes], float, int, int]:
    """(JPEGs, fps, height, width) of every kept frame; raises DecodeError for a video that cannot be decoded."""
    from torchvision.io import encode_jpeg

    info, frames = iter_frames(uri, spec.short_side, spec.fps)
    jpegs, shape = [], (0, 0)
    for frame in frames:
        shape = frame.shape[:2]
        jpegs.append(encode_jpeg(torch.from_numpy(frame).permute(2, 0, 1), quality=spec.quality).numpy().tobytes())
    if not jpegs:
        raise DecodeError(uri, "no_frames")
    return jpegs, info.fps, *shape


def write_shard(item: dict, dest: str, spec: dict) -> dict:
    """Ray Data map: write one shard (or find it done) and return its summary."""
    name = item["shard"]
    done_uri = storage.join(dest, "shards", f"{name}.json")
    if storage.exists(done_uri):
        with storage.open_uri(done_uri) as f:
            return {**json.load(f), "resumed": True}
    prepare_spec = PrepareSpec(**spec)
    final = storage.join(dest, "shards", f"{name}.parquet")
    target = final if storage.is_remote(final) else f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    fs, path = storage.filesystem(target)
    if not storage.is_remote(target):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    written, skipped, bytes_in = [], [], 0
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, shards.SCHEMA, compression="none") as writer:
        for video in json.loads(item["videos"]):
            bytes_in += _size(video["uri"])
            try:
                jpegs, fps, height, width = encode_video(video["uri"], prepare_spec)
            except DecodeError as e:
                skipped.append((video["path"], e.reason))
                logger.warning("skipping video %s: %s", video["uri"], e)
                continue
            except Exception as e:  # an odd file must not stop the job: leave it out and say why
                if storage.is_unavailable(e):
                    raise
                skipped.append((video["path"], f"other: {type(e).__name__}: {e}"[:200]))
                logger.warning("skipping video %s: %s: %s", video["uri"], type(e).__name__, e)
                continue
            row = {"index": video["index"], "path": video["path"], "labels": video["labels"],
                   "num_frames": len(jpegs), "fps": fps, "height": height, "width": width, "frames": jpegs}  # fmt: skip
            writer.write_table(pa.Table.from_pylist([row], schema=shards.SCHEMA))
            written.append({"index": video["index"], "path": video["path"], "labels": video["labels"],
                            "row_group": len(written), "num_frames": len(jpegs)})  # fmt: skip
    if target != final:
        os.replace(path, storage.filesystem(final)[1])
    summary = {"shard": name, "split": item["split"], "written": written, "skipped": skipped,
               "bytes_in": bytes_in, "bytes_out": _size(final)}  # fmt: skip
    _write_bytes(done_uri, json.dumps(summary).encode())
    return {**summary, "resumed": False}


def _size(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    try:
        return fs.size(path)
    except FileNotFoundError:
        return 0


def _remove_leftovers(dest: str) -> None:
    """Files a crashed local run left aside (S3 keeps no partial objects)."""
    if storage.is_remote(dest):
        return
    fs, path = storage.filesystem(storage.join(dest, "shards"))
    for leftover in fs.glob(f"{path}/*.tmp-*") if fs.exists(path) else []:
        fs.rm(leftover)


def _write_bytes(uri: str, data: bytes) -> None:
    """Write a small file whole: aside and renamed locally, one PUT on S3."""
    fs, path = storage.filesystem(uri)
    if storage.is_remote(uri):
        fs.pipe_file(path, data)
        return
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    aside = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(aside, "wb") as f:
        f.write(data)
    os.replace(aside, path)


def prepare(
    root: str, dest: str, spec: PrepareSpec, concurrency: int | None = None, plan: list[dict] | None = None
) -> PrepareSummary:
    """Write the shard dataset of `root` under `dest` (`plan`: shard_plan's, when already read); progress is logged
    as shards finish."""
    plan = plan if plan is not None else shard_plan(root, spec.videos_per_shard)
    _remove_leftovers(dest)
    class_names = read_mmit(root, "training").class_names
    ds = ray.data.from_items(plan, override_num_blocks=max(1, len(plan))).map(
        _summary_row, fn_kwargs={"dest": dest, "spec": asdict(spec)}, num_cpus=1, concurrency=concurrency
    )
    summaries = []
    with progress_bar(len(plan), f"preparing {dest}", "shard") as bar:
        for row in ds.iter_rows():
            summary = json.loads(row["summary"])
            summaries.append(summary)
            bar.update()
            bar.set_postfix(written=sum(len(s["written"]) for s in summaries),
                            skipped=sum(len(s["skipped"]) for s in summaries))  # fmt: skip
            logger.debug("shard %s: %d written, %d skipped%s", summary["shard"], len(summary["written"]),
                         len(summary["skipped"]), " (done before)" if summary["resumed"] else "")  # fmt: skip
    summaries.sort(key=lambda s: s["shard"])
    _write_dataset_files(root, dest, spec, summaries, class_names)
    skipped = [(s["split"], path, reason) for s in summaries for path, reason in s["skipped"]]
    return PrepareSummary(
        videos=sum(len(s["written"]) + len(s["skipped"]) for s in summaries),
        written=sum(len(s["written"]) for s in summaries),
        skipped=skipped,
        bytes_in=sum(s["bytes_in"] for s in summaries),
        bytes_out=sum(s["bytes_out"] for s in summaries),
        resumed_shards=sum(s["resumed"] for s in summaries),
    )


def _summary_row(item: dict, dest: str, spec: dict) -> dict:
    return {"summary": json.dumps(write_shard(item, dest, spec))}  # one string column: blocks always concatenate


def _write_dataset_files(root: str, dest: str, spec: PrepareSpec, summaries: list[dict], names: list[str]) -> None:
    """Annotations, index and skipped list of the shards written, then the format file that marks completion."""
    for split, csv_name in MMIT_SPLITS.items():
        videos = sorted((v for s in summaries if s["split"] == split for v in s["written"]), key=lambda v: v["index"])
        _write_bytes(storage.join(dest, csv_name), _csv([[v["path"], *v["labels"]] for v in videos]))
    _write_bytes(storage.join(dest, MMIT_CATEGORIES), _csv([[name, k] for k, name in enumerate(names)]))
    rows = [{"path": v["path"], "split": s["split"], "shard": s["shard"], "row_group": v["row_group"],
             "num_frames": v["num_frames"]} for s in summaries for v in s["written"]]  # fmt: skip
    index = pa.Table.from_pylist(rows, schema=pa.schema([("path", pa.string()), ("split", pa.string()),
        ("shard", pa.string()), ("row_group", pa.int32()), ("num_frames", pa.int32())]))  # fmt: skip
    sink = io.BytesIO()
    pq.write_table(index, sink)
    _write_bytes(storage.join(dest, shards.INDEX_FILE), sink.getvalue())
    skipped = [[path, s["split"], reason] for s in summaries for path, reason in s["skipped"]]
    _write_bytes(storage.join(dest, shards.SKIPPED_FILE), _csv([["path", "split", "reason"], *skipped]))
    meta = {"format": shards.FORMAT, "version": shards.VERSION, "source": root, **asdict(spec),
            "videos": len(rows), "frames": int(np.sum([r["num_frames"] for r in rows], dtype=np.int64))}  # fmt: skip
    _write_bytes(storage.join(dest, shards.FORMAT_FILE), json.dumps(meta, indent=2).encode())


def _csv(rows: list[list]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()
