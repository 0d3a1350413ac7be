"""Downstream use of registered models on one real local Ray cluster: the multi-view evaluation (views, ensembles,
the MLflow run), batch prediction to Parquet over real clips and S3 (moto), and few-file prediction."""

from __future__ import annotations

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
from conftest import current_tracking_uri, local_ray, s3_env
from mlflow.tracking import MlflowClient

from pipeline.data.annotations import Manifest, read_mmit
from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.data.views import ViewSpec, full_side_boxes, video_views
from pipeline.registry.batch import batch_predict, list_inputs
from pipeline.registry.evaluate import evaluate, log_evaluation, metrics_of, targets_of
from pipeline.registry.predict import predict_top_k
from pipeline.registry.scoring import load_classifier
from pipeline.registry.serving import model_config
from pipeline.registry.tracking import log_and_register_model, start_run
from tin_core import ModelConfig

REPO = Path(__file__).resolve().parents[1]
FRAME, SHORT = 32, 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto_s3):
    env = {**s3_env(moto_s3), "TIN_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    with local_ray(tmp_path_factory.mktemp("ray"), num_cpus=3, env=env):
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    spec = SyntheticSpec(num_train=8, num_val=6, frames=12, size=48)
    return generate_mmit(tmp_path_factory.mktemp("data") / "mmit", spec)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """This module's MLflow store, set as the current one (MLflow keeps it in the environment) for the module only."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    with current_tracking_uri(uri):
        yield uri


def register(tracking: str, tmp: Path, name: str, arch: str, segments: int, class_names: list[str],
             multi_label: bool = True, seed: int = 0) -> str:  # fmt: skip
    """A randomly initialised tiny model, registered as `name` version 1; returns its models:/ URI."""
    torch.manual_seed(seed)
    model = ModelConfig(arch=arch, num_segments=segments)
    weights = tmp / f"{name}.pt"
    torch.save(model.build(len(class_names)).state_dict(), weights)
    config = model_config(model, len(class_names), FRAME, SHORT, class_names, multi_label)
    tracker = start_run(tracking, "models", name, {})
    example = np.zeros((1, segments, FRAME, FRAME, 3), np.uint8)
    version, _, _ = log_and_register_model(tracker, weights, config, name, 0.5, example)
    return f"models:/{name}/{version}"


@pytest.fixture(scope="module")
def models(tracking, root, tmp_path_factory) -> dict[str, str]:
    names = read_mmit(str(root), "validation").class_names
    tmp = tmp_path_factory.mktemp("weights")
    return {
        "tsm4": register(tracking, tmp, "tsm4", "tsm", 4, names, seed=1),
        "tsn6": register(tracking, tmp, "tsn6", "tsn", 6, names, seed=2),
        "single": register(tracking, tmp, "single", "tsm", 4, names, multi_label=False, seed=3),
    }


def test_full_side_crops_cover_the_long_side():
    assert full_side_boxes(40, 70) == [(0, 0, 40, 40), (0, 15, 40, 40), (0, 30, 40, 40)]
    assert full_side_boxes(70, 40) == [(0, 0, 40, 40), (15, 0, 40, 40), (30, 0, 40, 40)]
    with pytest.raises(ValueError, match="crops must be one of"):
        ViewSpec(4, SHORT, FRAME, crops=2)


def test_multi_view_scores_are_the_mean_of_the_single_views(cluster, root, tracking, models):
    manifest = read_mmit(str(root), "validation")
    result = evaluate([models["tsm4"]], manifest, tracking, clips=2, crops=3)
    assert result.views == 6 and result.videos == len(manifest.records)
    classifier = load_classifier(models["tsm4"])
    spec = ViewSpec.of_model(classifier.config, clips=2, crops=3)
    direct = []
    for record in manifest.records:
        views = video_views(record.uri, spec)
        assert views.shape == (6, 4, SHORT, SHORT, 3)  # full short side, not the training crop
        direct.append(np.mean([classifier.scores(view[None])[0] for view in views], axis=0))
    np.testing.assert_allclose(result.probs, np.stack(direct), rtol=1e-4, atol=1e-6)
    assert result.metrics == metrics_of(np.stack(direct), targets_of(manifest), manifest.class_names)[0]


def test_an_ensemble_of_clip_lengths_is_the_mean_of_its_models(cluster, root, tracking, models):
    manifest = read_mmit(str(root), "validation")
    alone = [evaluate([models[m]], manifest, tracking, clips=2).probs for m in ("tsm4", "tsn6")]
    both = evaluate([models["tsm4"], models["tsn6"]], manifest, tracking, clips=2)
    np.testing.assert_allclose(both.probs, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.integration
def test_tin_cannot_be_scored_at_another_clip_length(tracking, root, tmp_path):
    names = read_mmit(str(root), "validation").class_names
    uri = register(tracking, tmp_path, "tin4", "tin", 4, names)
    with pytest.raises(ValueError, match="trained on 4 segments and cannot score 8"):
        load_classifier(uri, num_segments=8)


def test_single_label_evaluation_logs_accuracy_and_a_confusion_matrix(cluster, root, tracking, models):
    multi = read_mmit(str(root), "validation")
    manifest = Manifest([type(r)(r.uri, r.labels[:1]) for r in multi.records], multi.class_names, False)
    result = evaluate([models["single"]], manifest, tracking, clips=1, crops=1)
    assert {"val_top1", "val_top5", "val_mean_class_accuracy", "val_map"} <= set(result.metrics)
    run_id = log_evaluation(result, [models["single"]], manifest, "evaluation", {"split": "validation"})
    client = MlflowClient(tracking)
    run = client.get_run(run_id)
    assert run.data.metrics["val_top1"] == pytest.approx(result.metrics["val_top1"])
    assert {a.path for a in client.list_artifacts(run_id)} >= {"ap_per_class.json", "confusion_matrix.png"}
    version = client.get_model_version("single", "1")
    assert version.tags["evaluation_run_id"] == run_id
    model_id = version.source.removeprefix("models:/")
    linked = {m.key: m.value for m in client.get_logged_model(model_id).metrics if m.run_id == run_id}
    assert linked["val_top1"] == pytest.approx(result.metrics["val_top1"])  # also on the version's logged model


def test_evaluate_job_prints_one_json_line_and_links_the_run(cluster, root, tracking, models):
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate_mmit.py"), "--model", models["tsm4"], "--data", str(root),
         "--clips", "2", "--crops", "3", "--mlflow-uri", tracking], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["views"] == 6 and summary["videos"] == 6 and 0 <= summary["val_map"] <= 1
    assert "val_map_classes" in summary
    client = MlflowClient(tracking)
    assert client.get_model_version("tsm4", "1").tags["evaluation_run_id"] == summary["run_id"]
    assert client.get_run(summary["run_id"]).data.metrics["val_map"] == pytest.approx(summary["val_map"])


def test_batch_prediction_over_real_clips_keeps_every_video(cluster, tracking, models, shared_videos, tmp_path):
    output = tmp_path / "out" / "predictions.parquet"
    summary = batch_predict(models["tsm4"], str(shared_videos), str(output), tracking, top_k=3)
    table = pq.read_table(output)
    assert table.num_rows == 31 == summary["videos"] and summary["errors"] == 1
    assert table.schema.names == ["uri", "top_k_labels", "top_k_scores", "error"]
    rows = {Path(r["uri"]).name: r for r in table.to_pylist()}
    assert rows["decord__corrupted.mp4"]["error"] == "corrupt" and rows["decord__corrupted.mp4"]["top_k_labels"] == []
    good = [r for name, r in rows.items() if name != "decord__corrupted.mp4"]
    assert all(r["error"] is None and len(r["top_k_labels"]) == 3 for r in good)
    assert all(r["top_k_scores"] == sorted(r["top_k_scores"], reverse=True) for r in good)
    assert [p.name for p in output.parent.iterdir()] == ["predictions.parquet"]  # nothing staged is left

    # A rerun from a list of URIs replaces the output whole.
    listing = tmp_path / "two.txt"
    clips = sorted(shared_videos.glob("*.mp4"))[1:3]
    listing.write_text(f"# two clips\n{clips[0]}\n{clips[1]}\n")
    batch_predict(models["tsm4"], str(listing), str(output), tracking, top_k=1)
    assert pq.read_table(output).num_rows == 2 and len(list(output.parent.iterdir())) == 1


def test_batch_prediction_from_and_to_s3(cluster, root, tracking, models, moto_s3):
    s3 = boto3.client("s3", **{"endpoint_url": moto_s3, "region_name": "us-east-1"})
    s3.create_bucket(Bucket="predict")
    for path in sorted((root / "videos").rglob("*.mp4"))[:3]:
        s3.upload_file(str(path), "predict", f"in/{path.relative_to(root / 'videos')}")
    assert len(list_inputs("s3://predict/in/")) == 3
    summary = batch_predict(models["tsm4"], "s3://predict/in/", "s3://predict/out/preds.parquet", tracking)
    assert summary == {**summary, "videos": 3, "predicted": 3, "errors": 0}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="predict", Prefix="out/")["Contents"]]
    assert keys == ["out/preds.parquet"]
    s3.download_file("predict", "out/preds.parquet", str(root.parent / "preds.parquet"))
    table = pq.read_table(root.parent / "preds.parquet")
    assert sorted(table.column("uri").to_pylist()) == sorted(list_inputs("s3://predict/in/"))


def test_mmit_csv_input_resolves_paths_under_videos(root):
    uris = list_inputs(str(root / "validationSet.csv"))
    assert uris == [r.uri for r in read_mmit(str(root), "validation").records]


def test_few_file_prediction_reports_an_undecodable_video(tracking, models, root, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    good = sorted((root / "videos").rglob("*.mp4"))[:3]
    results = list(predict_top_k(models["tsm4"], [str(good[0]), str(bad), *map(str, good[1:])], k=2, batch_size=2))
    assert [r[0] for r in results] == [str(good[0]), str(bad), *map(str, good[1:])]
    assert results[1][1:] == ([], "unreadable")
    assert all(len(top) == 2 and error is None for _, top, error in results[:1] + results[2:])
