"""Transforms, the dataset check command, and the Ray Data clip pipeline on a real local Ray cluster, from local
disk and from a real S3 endpoint (moto's server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import numpy as np
import pytest
import ray
import torch
from conftest import local_ray, s3_env

from pipeline.data import check
from pipeline.data.annotations import read_mmit
from pipeline.data.dataset import (
    BadVideoCounter,
    ClipSpec,
    clip_dataset,
    continue_at_epoch,
    manifest_rows,
    reason_code,
    torch_batches,
)
from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, multi_scale_crop_box, normalize

SPEC = ClipSpec(num_segments=4, short_side=40, crop_size=32)


# --- transforms ---------------------------------------------------------------------------------------------------


def test_multi_scale_crop_boxes_stay_inside_and_vary():
    rng = np.random.default_rng(0)
    boxes = {multi_scale_crop_box(120, 160, 112, rng) for _ in range(200)}
    assert len(boxes) > 10
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        assert h in (120, 105, 90, 79) and w in (120, 105, 90, 79)  # scales 1, .875, .75, .66 of the short side


def test_clip_transform_shapes_and_shared_crop():
    clip = np.random.default_rng(0).integers(0, 255, (4, 40, 50, 3), dtype=np.uint8)
    clip[:] = clip[0]  # identical frames: a crop shared by the clip keeps them identical
    out = ClipTransform(32, train=True, flip=True)(clip, np.random.default_rng(1))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[0], out[t]) for t in range(4))
    centre = ClipTransform(32)(clip)
    assert np.array_equal(centre[0], clip[0, 4:36, 9:41])


def test_flip_only_when_asked():
    clip = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    clip[:, :, :16] = 255  # bright left half: every crop keeps its left column in it
    flips = [ClipTransform(32, train=True, flip=True)(clip, np.random.default_rng(s))[0, 16, 0, 0] for s in range(20)]
    assert 0 in flips and 255 in flips
    never = [ClipTransform(32, train=True)(clip, np.random.default_rng(s))[0, 16, 0, 0] for s in range(20)]
    assert set(never) == {255}


def test_normalize():
    clips = torch.full((1, 2, 4, 4, 3), 255, dtype=torch.uint8)
    out = normalize(clips)
    assert out.shape == (1, 2, 3, 4, 4) and out.dtype == torch.float32
    for c in range(3):
        assert out[0, 0, c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel=1e-5)


# --- a dataset of the real clips ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_clips_root(tmp_path_factory, shared_videos) -> Path:
    """All 31 real clips laid out as an MMiT dataset (3 classes; the corrupt one included)."""
    root = tmp_path_factory.mktemp("real_mmit")
    (root / "videos" / "misc").mkdir(parents=True)
    rows = []
    for i, clip in enumerate(sorted(shared_videos.glob("*.*"))):
        if clip.name == "MANIFEST.md":
            continue
        shutil.copy(clip, root / "videos" / "misc" / clip.name)
        rows.append(f"misc/{clip.name},{i % 3}" + (",2" if i % 5 == 0 else ""))
    (root / "trainingSet.csv").write_text("\n".join(rows) + "\n")
    (root / "validationSet.csv").write_text("\n".join(rows[:4]) + "\n")
    (root / "moments_categories.txt").write_text("a,0\nb,1\nc,2\n")
    return root


@pytest.mark.integration
def test_check_command_on_real_clips(real_clips_root, capsys):
    code = check.main([str(real_clips_root), "--num-segments", "8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "checked 31 clips: 30 decoded, 1 skipped"
    assert code == 0  # 1/31 <= 5%
    skipped = [line for line in lines if line.startswith("skipped")]
    assert len(skipped) == 1 and "decord__corrupted.mp4" in skipped[0] and "corrupt" in skipped[0]
    assert any("torchcodec__av1_video.mkv" in line and "(pyav)" in line for line in lines)
    assert check.main([str(real_clips_root), "--max-bad-fraction", "0"]) == 1


def test_check_command_reports_bad_root(tmp_path, capsys):
    assert check.main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# --- Ray Data ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(moto_s3, tmp_path_factory):
    """One local Ray cluster for this module; its decode tasks reach moto through the runtime env."""
    env = {
        **s3_env(moto_s3),
    }
    with local_ray(tmp_path_factory.mktemp("ray"), num_cpus=2, env=env, runtime_env={"env_vars": env}):
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


def collect(ds, batch_size=4):
    counter = BadVideoCounter()
    out = {"clips": [], "labels": [], "index": [], "good": []}
    for clips, labels, index, good in torch_batches(ds, batch_size, counter=counter):
        for key, value in zip(out, (clips, labels, index, good), strict=True):
            out[key].append(value)
    return {k: torch.cat(v) for k, v in out.items()}, counter


def test_ray_pipeline_real_clips_skips_and_counts_bad(ray_cluster, real_clips_root):
    manifest = read_mmit(str(real_clips_root), "training")
    ds = clip_dataset(manifest_rows(manifest), SPEC, manifest.num_classes, True, train=False, decoders=2,
                      cpus_per_decoder=0.5)  # fmt: skip
    out, counter = collect(ds)
    assert counter.seen == 31 and counter.bad == {"corrupt": 1}
    assert sorted(out["index"].tolist()) == list(range(31))
    assert out["clips"].shape == (31, 4, 3, 32, 32) and out["clips"].dtype == torch.float32
    assert int(out["good"].sum()) == 30
    labels = out["labels"][out["index"].argsort()]
    expected = np.zeros((31, 3), dtype=np.float32)
    for i, record in enumerate(manifest.records):
        expected[i, list(record.labels)] = 1
    assert np.array_equal(labels.numpy(), expected)


def test_bad_video_counter_masks_and_counts_by_reason():
    counter = BadVideoCounter()
    status = torch.tensor([0, reason_code("corrupt"), 0, reason_code("no such reason")], dtype=torch.int8)
    assert counter.update(status).tolist() == [True, False, True, False]
    assert counter.seen == 4 and counter.bad == {"corrupt": 1, "other": 1}


def test_raw_rows_are_uint8_clips(ray_cluster, real_clips_root):
    manifest = read_mmit(str(real_clips_root), "validation")
    ds = clip_dataset(manifest_rows(manifest), SPEC, 3, True, train=False, decoders=1, cpus_per_decoder=0.5)
    rows = ds.take_all()
    good = [row for row in rows if row["status"] == 0]
    assert len(rows) == 4 and len(good) == 3  # the corrupt clip sorts first
    assert all(row["clip"].dtype == np.uint8 and row["clip"].shape == (4, 32, 32, 3) for row in good)
    assert all(row["labels"].dtype == np.float32 and row["labels"].shape == (3,) for row in rows)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return generate_mmit(tmp_path_factory.mktemp("synthetic") / "mmit", SyntheticSpec(num_train=16, num_val=8))


def seeded_epochs(rows, num_classes, seed, epochs=2, start=0):
    """`epochs` passes over a fresh training dataset on two decoders, in order as the training job runs it, the
    first drawn as epoch `start`."""
    ds = clip_dataset(rows, SPEC, num_classes, True, train=True, decoders=2, cpus_per_decoder=0.5, batch_size=2,
                      seed=seed)  # fmt: skip
    ds.context.execution_options.preserve_order = True
    continue_at_epoch(ds, start)
    return [collect(ds)[0] for _ in range(epochs)]


def test_training_samples_change_every_epoch_and_repeat_with_the_seed(ray_cluster, synthetic_root):
    manifest = read_mmit(str(synthetic_root), "training")
    rows = manifest_rows(manifest)
    first, second = seeded_epochs(rows, manifest.num_classes, seed=3)
    assert sorted(first["index"].tolist()) == sorted(second["index"].tolist()) == list(range(16))
    assert first["index"].tolist() != second["index"].tolist(), "a new epoch must visit the clips in a new order"
    a = first["clips"][first["index"].argsort()]
    b = second["clips"][second["index"].argsort()]
    assert not torch.equal(a, b), "a new epoch must draw new frames and crops"

    again = seeded_epochs(rows, manifest.num_classes, seed=3)  # a rerun: the same order and draws, epoch by epoch
    for run, rerun in zip((first, second), again, strict=True):
        assert run["index"].tolist() == rerun["index"].tolist()
        assert torch.equal(run["clips"], rerun["clips"])
    [resumed] = seeded_epochs(rows, manifest.num_classes, seed=3, epochs=1, start=1)  # a run resumed at epoch 1
    assert resumed["index"].tolist() == second["index"].tolist() and torch.equal(resumed["clips"], second["clips"])
    other, _ = seeded_epochs(rows, manifest.num_classes, seed=4)
    assert other["index"].tolist() != first["index"].tolist()
    assert not torch.equal(other["clips"][other["index"].argsort()], a), "another seed must draw other crops"


def test_eval_pipeline_is_deterministic(ray_cluster, synthetic_root):
    manifest = read_mmit(str(synthetic_root), "validation")
    rows = manifest_rows(manifest)
    runs = [collect(clip_dataset(rows, SPEC, manifest.num_classes, True, train=False, decoders=1,
                                 cpus_per_decoder=0.5))[0] for _ in range(2)]  # fmt: skip
    a, b = (r["clips"][r["index"].argsort()] for r in runs)
    assert torch.equal(a, b)


def test_ray_pipeline_reads_from_s3(ray_cluster, moto_s3, synthetic_root):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    client.create_bucket(Bucket="clips")
    for path in synthetic_root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "clips", f"mmit/{path.relative_to(synthetic_root)}")
    manifest = read_mmit("s3://clips/mmit", "validation")
    assert manifest.records[0].uri.startswith("s3://clips/mmit/videos/")
    rows = manifest_rows(manifest)
    from_s3, counter = collect(clip_dataset(rows, SPEC, manifest.num_classes, True, train=False, decoders=1,
                                            cpus_per_decoder=0.5))  # fmt: skip
    local_manifest = read_mmit(str(synthetic_root), "validation")
    local, _ = collect(clip_dataset(manifest_rows(local_manifest), SPEC, manifest.num_classes, True, train=False,
                                    decoders=1, cpus_per_decoder=0.5))  # fmt: skip
    assert counter.seen == 8 and not counter.bad
    assert torch.equal(from_s3["clips"][from_s3["index"].argsort()], local["clips"][local["index"].argsort()])
