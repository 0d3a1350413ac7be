"""Decode every video of an MMiT dataset once into frame shards, so training decodes a few JPEGs per clip.

    python jobs/prepare_mmit.py --data s3://bucket/mmit --output s3://bucket/mmit-shards
    ray job submit --working-dir . -- python jobs/prepare_mmit.py --data ... --output ... --short-side 256 --fps 8
    python jobs/train_mmit.py --data s3://bucket/mmit-shards      # training, check and evaluation read shards

One Ray task per shard of --videos-per-shard videos (Parquet, one row per video, its frames as JPEGs). A rerun
with the same arguments finishes the shards a crashed run left and keeps the rest. Videos that cannot be decoded
are left out and listed in DEST/skipped.csv; the last line is `prepared N videos: P written, S skipped, X GB -> Y GB`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory


@dataclass
class Prepare:
    data: str
    """source dataset root (local or s3://) in the MMiT layout"""
    output: str
    """destination root (local or s3://) of the shard dataset"""
    short_side: int = 256
    """stored frames' short side in pixels"""
    fps: float | None = None
    """resample every video to this frame rate (default: keep every frame)"""
    quality: int = 90
    """JPEG quality, 1-100"""
    videos_per_shard: int = 128
    """videos per Parquet file (a few hundred MB for short clips at 256 px)"""
    concurrency: int | None = None
    """shards written at once (default: as many as the cluster's CPUs allow)"""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = tyro.cli(Prepare, args=argv, description=__doc__)
    from pipeline.data.annotations import AnnotationError
    from pipeline.data.prepare import PrepareSpec, prepare, shard_plan
    from pipeline.train.config import usage_error
    from pipeline.train.driver import connect_ray

    if args.short_side < 1 or not 1 <= args.quality <= 100 or (args.fps is not None and args.fps <= 0):
        usage_error(ValueError("--short-side must be >= 1, --quality within 1-100 and --fps > 0"))
    spec = PrepareSpec(args.short_side, args.fps, args.quality, args.videos_per_shard)
    try:
        plan = shard_plan(args.data, args.videos_per_shard)  # bad annotations fail here, before any Ray work
    except (ValueError, AnnotationError, FileNotFoundError) as e:
        usage_error(e)
    connect_ray()
    summary = prepare(args.data, args.output, spec, args.concurrency, plan)
    for split, path, reason in summary.skipped:
        print(f"skipped {split} video {path}: {reason}")
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
