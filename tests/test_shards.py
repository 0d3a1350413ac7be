"""Frame shards on one real local Ray cluster: the prepare job over the real clips (the corrupt one skipped with its
reason), shard clips equal to their video clips within JPEG tolerance, a rerun after a crash, S3 both ways, and a
training run from shards scoring as one from the videos."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import local_ray, s3_env

from pipeline.data import check, shards
from pipeline.data.dataset import ClipDecoder, ClipSpec
from pipeline.data.prepare import PrepareSpec, prepare
from pipeline.data.sampling import segment_indices
from pipeline.data.shards import read_split
from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.data.transforms import ClipTransform
from pipeline.data.video import decode_clip, probe
from pipeline.registry.batch import list_inputs
from pipeline.registry.evaluate import evaluate
from pipeline.train.config import JobConfig
from pipeline.train.driver import run_training

SIDE = 64  # stored and decoded short side in these tests


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto_s3):
    env = {**s3_env(moto_s3), "TIN_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    temp_dir = tmp_path_factory.mktemp("ray")
    with local_ray(temp_dir, num_cpus=4, env=env):
        yield temp_dir


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory, shared_videos) -> Path:
    """An MMiT layout whose training split lists every real clip (links, not copies)."""
    root = tmp_path_factory.mktemp("real")
    (root / "videos").mkdir()
    names = sorted(p.name for p in shared_videos.iterdir() if p.name != "MANIFEST.md")
    for name in names:
        (root / "videos" / name).symlink_to(shared_videos / name)
    (root / "trainingSet.csv").write_text("".join(f"{name},{i % 2}\n" for i, name in enumerate(names)))
    (root / "validationSet.csv").write_text("")
    (root / "moments_categories.txt").write_text("even,0\nodd,1\n")
    return root


@pytest.fixture(scope="module")
def real_shards(cluster, real_clips, tmp_path_factory):
    dest = tmp_path_factory.mktemp("real-shards")
    return dest, prepare(str(real_clips), str(dest), PrepareSpec(short_side=SIDE, videos_per_shard=8))


def test_real_clips_prepare_with_the_corrupt_one_skipped(real_clips, real_shards, capsys):
    dest, summary = real_shards
    assert (summary.videos, summary.written) == (31, 30)
    assert summary.skipped == [("training", "decord__corrupted.mp4", "corrupt")]
    assert summary.line().startswith("prepared 31 videos: 30 written, 1 skipped, ")
    with open(dest / "skipped.csv") as f:
        assert list(csv.reader(f)) == [["path", "split", "reason"], ["decord__corrupted.mp4", "training", "corrupt"]]
    meta = shards.read_format(str(dest))
    assert (meta["short_side"], meta["quality"], meta["videos"]) == (SIDE, 90, 30)
    manifest = shards.read_split(str(dest), "training")
    assert len(manifest.records) == 30 and all(shards.is_row(r.uri) for r in manifest.records)
    # Every frame stored: as many as PyAV decodes from the source; labels kept.
    for record, (path, _, frames) in zip(manifest.records, shards.index_rows(str(dest), "training"), strict=True):
        assert record.num_frames == frames == probe(str(real_clips / "videos" / path)).num_frames, path
        assert record.labels == ((sorted(os.listdir(real_clips / "videos")).index(path)) % 2,)
    assert not list((dest / "shards").glob("*.tmp-*"))
    assert check.main([str(dest)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "checked 30 clips: 30 decoded, 0 skipped"
    assert len(list_inputs(str(dest))) == 30


def jpeg_round_trip(frames: np.ndarray, quality: int = 90) -> np.ndarray:
    """The frames after one JPEG encode/decode: what a shard can at best hold."""
    from torchvision.io import decode_jpeg, encode_jpeg

    chw = [torch.from_numpy(f).permute(2, 0, 1).contiguous() for f in frames.reshape(-1, *frames.shape[-3:])]
    out = np.stack([decode_jpeg(encode_jpeg(f, quality=quality)).permute(1, 2, 0).numpy() for f in chw])
    return out.reshape(frames.shape)


def test_shard_clips_equal_video_clips_within_jpeg_tolerance(real_clips, real_shards):
    dest, _ = real_shards
    rng = np.random.default_rng(0)
    transform = ClipTransform(56, train=False)
    decoder = ClipDecoder(ClipSpec(num_segments=8, short_side=SIDE, crop_size=56), 2, True, train=False)
    for path, row, frames in shards.index_rows(str(dest)):
        video = str(real_clips / "videos" / path)
        indices = segment_indices(frames, 8, "train", rng)
        from_video, _ = decode_clip(video, indices, SIDE, backend="pyav")  # the decoder the prepare job uses
        from_shard, info = decode_clip(row, indices, SIDE)
        assert info.backend == "jpeg" and from_shard.shape == from_video.shape, path
        # Exactly the video's frames after one JPEG round trip (its error is the only difference) ...
        assert np.abs(from_shard.astype(int) - jpeg_round_trip(from_video)).max() <= 1, path
        # ... and through the decoder's transforms (the centre crop at the segment centres) alike.
        centres, _ = decode_clip(video, segment_indices(frames, 8, "val"), SIDE, backend="pyav")
        clip, status = decoder.decode(row)
        assert status == 0 and np.abs(clip.astype(int) - transform(jpeg_round_trip(centres))).max() <= 1, path
        smaller, _ = decode_clip(row, indices, SIDE // 2)  # stored larger than asked: resized after decode
        assert min(smaller.shape[1:3]) == SIDE // 2


def test_rerun_after_a_failure_completes_without_duplicates(cluster, tmp_path):
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=12, num_val=4, frames=12, size=32))
    dest = tmp_path / "shards"
    spec = PrepareSpec(short_side=32, videos_per_shard=2)
    (dest / "shards" / "training-00003.parquet").mkdir(parents=True)  # shard 3 cannot be renamed into place
    with pytest.raises(Exception, match="training-00003"):
        prepare(str(root), str(dest), spec, concurrency=1)
    assert not (dest / "format.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (dest / "shards").glob("*.parquet") if p.is_file()}
    assert done, "no shard finished before the failure"
    (dest / "shards" / "training-00003.parquet").rmdir()
    summary = prepare(str(root), str(dest), spec)
    assert summary.written == 16 and summary.resumed_shards == len(done)
    assert all((dest / "shards" / name).stat().st_mtime_ns == mtime for name, mtime in done.items())
    paths = [path for path, _, _ in shards.index_rows(str(dest))]
    assert len(paths) == len(set(paths)) == 16
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in (dest / "shards").glob("*.parquet")) == 16
    assert not list((dest / "shards").glob("*.tmp-*"))


@pytest.mark.integration
def test_prepare_job_names_a_bad_source_before_ray(tmp_path):
    job = Path(__file__).resolve().parents[1] / "jobs" / "prepare_mmit.py"
    result = subprocess.run([sys.executable, str(job), "--data", str(tmp_path / "absent"), "--output",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "moments_categories.txt not found" in result.stderr
    assert "Ray" not in result.stderr and not (tmp_path / "out").exists()


def tiny_job(tmp_path: Path, root: str, name: str, **overrides) -> JobConfig:
    values = dict(
        root=root, num_segments=4, frame_size=32, epochs=1, batch_size=4, num_workers=1,
        cpus_per_worker=1, decoders=1, storage=str(tmp_path / "checkpoints"), name=name,
        mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="tests", register_as=f"tiny-{name}",
    )  # fmt: skip
    values.update(overrides)
    return JobConfig().override(**values)


def test_prepare_into_and_train_from_s3(cluster, moto_s3, tmp_path):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=8, num_val=4, frames=12, size=32))
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    client.create_bucket(Bucket="shards")
    for path in root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "shards", f"mmit/{path.relative_to(root)}")
    summary = prepare("s3://shards/mmit", "s3://shards/prepared", PrepareSpec(short_side=32, videos_per_shard=4))
    assert (summary.written, summary.skipped) == (12, [])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="shards", Prefix="prepared/")["Contents"]}
    assert {"prepared/format.json", "prepared/index.parquet", "prepared/shards/training-00001.parquet"} <= keys
    assert not [k for k in keys if ".tmp-" in k]
    outcome = run_training(tiny_job(tmp_path, "s3://shards/prepared", "from-s3-shards"))
    assert outcome.metrics["val_videos"] == 4 and outcome.metrics["bad_videos"] == 0


def test_training_from_shards_scores_as_from_videos(cluster, tmp_path):
    spec = SyntheticSpec(num_train=48, num_val=24, frames=16, size=32, appearance=True)
    root = generate_mmit(tmp_path / "mmit", spec)
    prepare(str(root), str(tmp_path / "shards"), PrepareSpec(short_side=32))
    scores, outcomes = {}, {}
    for name, data in (("videos", str(root)), ("shards", str(tmp_path / "shards"))):
        outcomes[name] = run_training(tiny_job(tmp_path, data, f"from-{name}", epochs=3, arch="tsm", seed=1))
        assert outcomes[name].metrics["val_videos"] == 24
        scores[name] = outcomes[name].metrics["val_map"]
    # Training draws its frames and crops at random, so the two runs differ by noise only.
    assert abs(scores["shards"] - scores["videos"]) < 0.15, scores
    # One model evaluated on both (deterministic views): they differ by the JPEG round trip only.
    trained = outcomes["shards"]
    model = f"models:/{trained.model_name}/{trained.version}"
    evaluations = {name: evaluate([model], read_split(data, "validation"), trained.tracking_uri, decoders=1)
                   for name, data in (("videos", str(root)), ("shards", str(tmp_path / "shards")))}  # fmt: skip
    assert evaluations["videos"].videos == evaluations["shards"].videos == 24
    assert abs(evaluations["videos"].metrics["val_map"] - evaluations["shards"].metrics["val_map"]) < 0.1
    assert json.loads((tmp_path / "shards" / "format.json").read_text())["videos"] == 72
