"""Batch prediction: top-k labels for every video of a folder, bucket prefix, URI list or MMiT CSV, scored on Ray Data
and written as one Parquet file (local or s3://) that appears whole when done.

Columns: uri (string), top_k_labels (list<string>), top_k_scores (list<float>), error (string, null when the video
decoded). Videos that cannot be decoded are rows with their reason, never a crash.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.bars import progress_bar
from pipeline.data import shards, storage
from pipeline.data.annotations.rows import AnnotationError, csv_rows, read_text, text_lines
from pipeline.data.views import ViewSpec
from pipeline.registry.scoring import load_classifier, reason, score_dataset

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".ts")
SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("top_k_labels", pa.list_(pa.string())),
        ("top_k_scores", pa.list_(pa.float32())),
        ("error", pa.string()),
    ]
)


def list_inputs(source: str) -> list[str]:
    """Video URIs of a folder or s3:// prefix (found by extension, recursively), an MMiT CSV (paths relative to the
    dataset's videos/ folder), or a text file of one path or URI per line ('#' starts a comment); for a frame-shard
    dataset (pipeline.data.shards), the rows of all its videos."""
    fs, path = storage.filesystem(source)
    if fs.isdir(path) and shards.is_shard_dataset(source):
        return [uri for _, uri, _ in shards.index_rows(source)]
    if fs.isdir(path):
        prefix = "s3://" if source.startswith("s3://") else ""
        found = sorted(p for p in fs.find(path) if p.lower().endswith(VIDEO_EXTENSIONS))
        if not found:
            raise ValueError(f"--input {source}: no videos ({', '.join(VIDEO_EXTENSIONS)}) found")
        return [prefix + p for p in found]
    if not fs.exists(path):
        raise ValueError(f"--input {source}: no such file, folder or bucket prefix")
    text = read_text(source)
    if source.lower().endswith(".csv"):
        videos = storage.join(_parent(_parent(source)) if _parent(source).endswith("annotations") else _parent(source),
                              "videos")  # fmt: skip
        uris = []
        for line, row in csv_rows(source, text):
            if not row[0]:
                raise AnnotationError(source, line, "video path is empty")
            uris.append(row[0] if "://" in row[0] or row[0].startswith("/") else storage.join(videos, row[0]))
    else:
        uris = [line for _, line in text_lines(text) if not line.startswith("#")]
    if not uris:
        raise ValueError(f"--input {source}: lists no videos")
    return uris


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if storage.is_remote(uri) else os.path.dirname(os.path.abspath(uri))


def top_k_table(uris: list[str], probs: np.ndarray, status: np.ndarray, names: list[str], k: int) -> pa.Table:
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1)[:, :k]
    good = status == 0
    return pa.Table.from_pydict(
        {
            "uri": uris,
            "top_k_labels": [[names[i] for i in row] if ok else [] for row, ok in zip(order, good, strict=True)],
            "top_k_scores": [p[row].tolist() if ok else [] for p, row, ok in zip(probs, order, good, strict=True)],
            "error": [reason(s) for s in status],
        },
        schema=SCHEMA,
    )


def batch_predict(
    model_uri: str, source: str, output: str, tracking_uri: str, top_k: int = 5, replicas: int = 1, decoders: int = 2
) -> dict:
    """Predict every input video and write `output` whole (replacing any earlier output). Returns counts."""
    output_fs, output_path = storage.filesystem(output)
    if output_fs.isdir(output_path):
        raise ValueError(f"--output {output} is a folder: give the path of the Parquet file to write")
    uris = list_inputs(source)
    config = load_classifier(model_uri).config
    names = config["class_names"]
    spec = ViewSpec.of_model(config)
    rows = [{"index": i, "uri": uri} for i, uri in enumerate(uris)]
    ds = score_dataset(rows, model_uri, tracking_uri, spec, replicas, decoders)
    local_dir = None if storage.is_remote(output) else os.path.dirname(os.path.abspath(output))
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
    done, errors, start, first = 0, 0, time.monotonic(), (0.0, 0)
    # The file is written beside the output (or in /tmp for S3) and moved into place only when complete.
    with tempfile.NamedTemporaryFile(dir=local_dir, prefix=".predict-", suffix=".parquet", delete=False) as tmp:
        staged = tmp.name
    try:
        with pq.ParquetWriter(staged, SCHEMA) as writer, progress_bar(len(uris), "predicting", "video") as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                index = batch["index"]
                writer.write_table(top_k_table([uris[i] for i in index], batch["probs"], batch["status"], names, top_k))
                if not done:  # the start: actors up, the model loaded, the first views decoded and scored
                    first = (time.monotonic() - start, len(index))
                done += len(index)
                errors += int((batch["status"] != 0).sum())
                bar.update(len(index))
                bar.set_postfix(not_decoded=errors)
        if done != len(uris):
            raise RuntimeError(f"{len(uris) - done} of {len(uris)} videos came back unscored")
        if local_dir:
            os.replace(staged, output)
        else:
            output_fs.put_file(staged, output_path)  # an S3 object appears only once its upload completes
    finally:
        if os.path.exists(staged):
            os.remove(staged)
    seconds = time.monotonic() - start
    steady = (done - first[1]) / max(seconds - first[0], 1e-9)
    return {"videos": len(uris), "predicted": done - errors, "errors": errors, "output": output,
            "seconds": round(seconds, 1), "first_batch_seconds": round(first[0], 1),
            "videos_per_s_after_first_batch": round(steady, 2)}  # fmt: skip
