"""The training job end to end on tiny data, on one real local Ray cluster: DDP and DeepSpeed with 2 workers,
a killed worker resumed from its checkpoint (with one worker, exactly as the uninterrupted run), rerunning a name,
data and checkpoints on S3, the MLflow registry and a fresh process loading the champion without unpickling, and
errors before any Ray work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from conftest import local_ray, s3_env
from mlflow.tracking import MlflowClient

from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.registry.tracking import finishing, log_and_register_model, start_run
from pipeline.train.config import JobConfig, flat_values
from pipeline.train.driver import RAY_CHECKPOINT_SNAPSHOT, next_epoch, run_training, trial_cpus, warn_if_waiting
from pipeline.train.results import summary

REPO = Path(__file__).resolve().parents[1]
STABLE_METRICS = ["train_loss", "val_map", "val_map_classes", "clips_per_s", "data_wait_fraction"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto_s3):
    """One local Ray cluster for the module (4 logical CPUs on 2 cores: 2 training workers plus decoding)."""
    env = {
        **s3_env(moto_s3),
        "TIN_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
    }
    temp_dir = tmp_path_factory.mktemp("ray")
    with local_ray(temp_dir, num_cpus=4, env=env):
        yield temp_dir


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate_mmit(tmp_path_factory.mktemp("data") / "mmit", SyntheticSpec(num_train=16, num_val=8, frames=12,
                                                                                size=32))  # fmt: skip


def tiny_config(tmp_path: Path, root, name: str, **overrides) -> JobConfig:
    values = dict(
        root=str(root), num_segments=4, frame_size=32, epochs=2, batch_size=4, num_workers=2, cpus_per_worker=0.5,
        decoders=1, storage=str(tmp_path / "checkpoints"), name=name, mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
        experiment="tests", register_as=f"tiny-{name}", warmup_epochs=0.5,
    )  # fmt: skip
    values.update(overrides)
    return JobConfig().override(**values)


def test_ddp_two_workers_end_to_end(cluster, tiny_root, tmp_path):
    cfg = tiny_config(tmp_path, tiny_root, "ddp")
    outcome = run_training(cfg)
    client = MlflowClient(cfg.tracking.mlflow_uri)
    run = client.get_run(outcome.run_id)
    for key in STABLE_METRICS:
        assert [m.step for m in client.get_metric_history(outcome.run_id, key)] == [0, 1], key
    assert {"val_top1", "val_top5"}.isdisjoint(run.data.metrics)  # multi-label data: no top-k
    assert set(run.data.params) >= set(flat_values(cfg))
    assert run.data.params["arch"] == "tin" and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"config.yaml", "complexity.txt", "val_ap_per_class.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert plots == {"plots/offsets_per_layer.png", "plots/weights_per_frame.png"}
    assert outcome.metrics["val_videos"] == 8 and 0 <= outcome.metrics["val_map"] <= 1
    # Every epoch checkpointed under a stable name, in the run's storage folder.
    epochs = sorted(p.name for p in (tmp_path / "checkpoints" / "ddp").glob("epoch-*"))
    assert epochs == ["epoch-0000", "epoch-0001"]
    assert {"model.pt", "train_state.pt", "meta.json"} <= {p.name for p in (tmp_path / "checkpoints" / "ddp" /
                                                                            epochs[-1]).iterdir()}  # fmt: skip
    champion = client.get_model_version_by_alias("tiny-ddp", "champion")
    assert str(champion.version) == outcome.version == "1" and outcome.champion
    assert champion.run_id == outcome.run_id  # the model was logged to this run
    # The summary ends with what the embedded default is there to show: time-reversed events beside appearance.
    last = summary(outcome).splitlines()[-1]
    assert last.startswith("time-reversed events: mAP") and "appearance classes: mAP" in last, last

    # Rerunning the same name resumes from its last checkpoint: only the new epoch is trained.
    more = run_training(cfg.override(epochs=3))
    assert more.last_metrics["epoch"] == 2 and more.last_metrics["resumed_from_epoch"] == 1
    assert (tmp_path / "checkpoints" / "ddp" / "epoch-0002").is_dir()

    # A fresh process loads the champion without unpickling anything and predicts from uint8 clips.
    code = (
        "import mlflow, numpy as np\n"
        f"mlflow.set_tracking_uri('{cfg.tracking.mlflow_uri}')\n"
        "model = mlflow.pyfunc.load_model('models:/tiny-ddp@champion')\n"
        "probs = model.predict(np.random.default_rng(0).integers(0, 255, (3, 4, 40, 48, 3), dtype=np.uint8))\n"
        "assert probs.shape == (3, 14) and ((probs >= 0) & (probs <= 1)).all(), probs\n"
        "print('ok', probs.dtype)\n"
    )
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert result.returncode == 0 and "ok float32" in result.stdout, result.stderr[-3000:]

    # The documented helper prints top-k labels for video paths.
    video = next((tiny_root / "videos").rglob("*.mp4"))
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "predict.py"), "--model", "models:/tiny-ddp@champion", "--top-k", "3",
         "--mlflow-uri", cfg.tracking.mlflow_uri, str(video)], capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(str(video)) and line.count(",") == 2


def test_one_worker_run_repeats_with_its_seed(cluster, tiny_root, tmp_path):
    """The seed fixes the weights, the clips' order and their frames and crops, epoch by epoch (two decoders)."""
    runs = [run_training(tiny_config(tmp_path, tiny_root, f"seeded-{i}", num_workers=1, decoders=2, seed=5))
            for i in range(2)]  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    losses = [[m.value for m in client.get_metric_history(run.run_id, "train_loss")] for run in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1], losses


def fp32_state(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point()), "checkpoints stay fp32"
    return state


def test_deepspeed_two_workers_bf16(cluster, tiny_root, tmp_path):
    cfg = tiny_config(tmp_path, tiny_root, "zero2", strategy="deepspeed", zero_stage=2, epochs=1, precision="bf16",
                      grad_accum=2)  # fmt: skip
    outcome = run_training(cfg)
    checkpoint = tmp_path / "checkpoints" / "zero2" / "epoch-0000"
    partitions = sorted(p.name for p in (checkpoint / "deepspeed").glob("*optim_states.pt"))
    assert len(partitions) == 2, partitions  # one ZeRO optimizer partition from each rank
    assert outcome.version == "1" and np.isfinite(outcome.metrics["train_loss"])
    fp32_state(checkpoint / "model.pt")


def test_ddp_two_workers_bf16_with_accumulation(cluster, tiny_root, tmp_path):
    cfg = tiny_config(tmp_path, tiny_root, "ddp-bf16", epochs=1, precision="bf16", grad_accum=2)
    outcome = run_training(cfg)
    assert np.isfinite(outcome.metrics["train_loss"]) and outcome.metrics["val_videos"] == 8
    import torch

    torch.manual_seed(cfg.optim.seed)  # as every rank does before building the model
    initial = cfg.model.build(14).state_dict()
    trained = fp32_state(tmp_path / "checkpoints" / "ddp-bf16" / "epoch-0000" / "model.pt")
    assert not all(initial[k].equal(v) for k, v in trained.items()), "the accumulated steps must change the weights"


def run_killed_after_first_checkpoint(cluster, cfg: JobConfig, storage: Path):
    """Run `cfg`, killing its last training worker once the Train controller has registered a checkpoint (a
    checkpoint directory alone may still be unknown to it: killed then, the run restarts from scratch, which it
    records in this snapshot); the outcome of the run that recovered."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(outcome=run_training(cfg)))
    thread.start()
    registered = storage / cfg.tracking.name / RAY_CHECKPOINT_SNAPSHOT
    deadline = time.time() + 300
    while not registered.is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert registered.is_file(), "no checkpoint registered"
    workers = train_worker_pids(cluster)
    assert len(workers) == cfg.dist.num_workers, workers
    os.kill(workers[-1], signal.SIGKILL)
    thread.join(timeout=600)
    outcome = box["outcome"]  # raises KeyError if the run failed instead of recovering
    assert outcome.last_metrics["resumed_from_epoch"] >= 0, "the finishing worker group must have restored a checkpoint"
    return outcome


def test_killed_worker_resumes_from_checkpoint(cluster, tiny_root, tmp_path):
    cfg = tiny_config(tmp_path, tiny_root, "killed", epochs=4, max_failures=2)
    outcome = run_killed_after_first_checkpoint(cluster, cfg, tmp_path / "checkpoints")
    assert outcome.last_metrics["epoch"] == 3
    history = MlflowClient(cfg.tracking.mlflow_uri).get_metric_history(outcome.run_id, "val_map")
    assert sorted({m.step for m in history}) == [0, 1, 2, 3], "every epoch is reported, none lost to the restart"
    last = sorted(p.name for p in (tmp_path / "checkpoints" / "killed").glob("epoch-*"))
    assert last[-1] == "epoch-0003"


def test_a_resumed_run_trains_as_the_uninterrupted_one(cluster, tiny_root, tmp_path):
    """One worker killed after its first checkpoint: the restarted worker group restores the weights and continues
    the seeded draws (data; dropout) at the epoch it resumes, not from the first epoch's, so every epoch's
    train_loss equals the uninterrupted run's."""
    options = dict(num_workers=1, decoders=2, seed=5, epochs=4, max_failures=2, dropout=0.5)
    whole = run_training(tiny_config(tmp_path, tiny_root, "whole", **options))
    resumed = run_killed_after_first_checkpoint(cluster, tiny_config(tmp_path, tiny_root, "resumed", **options),
                                                tmp_path / "checkpoints")  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    # by epoch: an epoch logged before the kill and trained again after it is counted once
    losses = [
        {m.step: m.value for m in client.get_metric_history(run.run_id, "train_loss")} for run in (whole, resumed)
    ]
    assert sorted(losses[0]) == [0, 1, 2, 3] and losses[0] == losses[1], losses


def test_an_interrupted_run_keeps_an_end_already_recorded(tmp_path):
    """A failure ends a running run FAILED, but not one whose end the sweep's driver already recorded."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name, recorded, want in [("plain", None, "FAILED"), ("recorded", "FINISHED", "FINISHED")]:
        tracker = start_run(uri, "tests", name, {})
        with pytest.raises(RuntimeError), finishing(tracker, tag_error=True):
            if recorded:
                tracker.client.set_terminated(tracker.run_id, status=recorded)
            raise RuntimeError("the trial's actor died")
        run = MlflowClient(uri).get_run(tracker.run_id)
        assert run.info.status == want and ("error" in run.data.tags) == (want == "FAILED")


def test_a_run_starts_one_epoch_past_the_checkpoint_ray_restores(tmp_path):
    run_dir = tmp_path / "run"
    assert next_epoch(None, str(run_dir)) == 0  # a new run: no directory yet
    for name in ["epoch-0000", "epoch-0002", "epoch-0003"]:
        (run_dir / name).mkdir(parents=True)
    assert next_epoch(None, str(run_dir)) == 0, "directories Ray has not registered are not restored"
    snapshot = {"ray_version": "2.60.0", "latest_checkpoint_result": {"checkpoint_dir_name": "epoch-0002"}}
    (run_dir / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert next_epoch(None, str(run_dir)) == 3  # epoch-0003 was written but not yet registered


def train_worker_pids(temp_dir: Path) -> list[int]:
    """PIDs of the Ray Train worker processes of this module's cluster (children of its raylet)."""
    import psutil

    raylets = [p for p in psutil.process_iter(["cmdline"]) if any("raylet" in a for a in p.info["cmdline"] or [])
               and any(str(temp_dir) in a for a in p.info["cmdline"] or [])]  # fmt: skip
    return sorted(
        child.pid
        for raylet in raylets
        for child in raylet.children(recursive=True)
        if " ".join(child.cmdline()).startswith("ray::RayTrainWorker")
    )


def test_data_and_checkpoints_on_s3(cluster, moto_s3, tiny_root, tmp_path):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    client.create_bucket(Bucket="tin-data")
    client.create_bucket(Bucket="tin-ckpt")
    for path in tiny_root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "tin-data", f"mmit/{path.relative_to(tiny_root)}")
    cfg = tiny_config(tmp_path, "s3://tin-data/mmit", "on-s3", storage="s3://tin-ckpt/runs", epochs=1)
    outcome = run_training(cfg)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="tin-ckpt", Prefix="runs/on-s3/")["Contents"]]
    assert {"runs/on-s3/epoch-0000/model.pt", "runs/on-s3/epoch-0000/meta.json"} <= set(keys)
    assert outcome.checkpoint.endswith("epoch-0000") and outcome.metrics["val_videos"] == 8


@pytest.mark.integration
def test_champion_moves_only_on_better_map(tmp_path):
    """The registry rule on a real MLflow store: each run registers a version; the alias follows the best mAP."""
    import torch

    from pipeline.registry.serving import model_config

    cfg = tiny_config(tmp_path, "unused", "rule", epochs=1)
    weights = tmp_path / "model.pt"
    torch.save(cfg.model.build(3).state_dict(), weights)
    config = model_config(cfg.model, 3, 32, 37, ["a", "b", "c"], True)
    example = np.zeros((1, 4, 32, 32, 3), dtype=np.uint8)
    results = []
    for i, val_map in enumerate([0.5, 0.4, 0.6]):
        tracker = start_run(cfg.tracking.mlflow_uri, "rule", f"run-{i}", {"i": i})
        results.append(log_and_register_model(tracker, weights, config, "rule-model", val_map, example))
    assert [(v, c) for v, c, _ in results] == [("1", True), ("2", False), ("3", True)]
    assert "champion stays version 1" in results[1][2] and "beats version 1" in results[2][2]
    client = MlflowClient(cfg.tracking.mlflow_uri)
    assert str(client.get_model_version_by_alias("rule-model", "champion").version) == "3"
    assert [client.get_model_version("rule-model", v).tags["val_map"] for v in "123"] == ["0.500000", "0.400000",
                                                                                        "0.600000"]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/mmit"], "--data /nonexistent/mmit: no such directory"),
        (["--arch", "i3d"], "invalid choice 'i3d' for argument '--arch'"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--epochs", "two"], "Error parsing --epochs"),
    ],
)
@pytest.mark.integration
def test_bad_input_fails_before_ray(args, message, tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "train_mmit.py"), *args], capture_output=True,
                            text=True, env={**os.environ, "TIN_CACHE_DIR": str(tmp_path)}, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr
    assert time.time() - start < 60


@pytest.mark.integration
def test_bad_annotations_name_file_and_line(tmp_path, tiny_root):
    import shutil

    root = tmp_path / "mmit"
    shutil.copytree(tiny_root, root)
    with open(root / "trainingSet.csv", "a") as f:
        f.write("moving_left/missing.mp4,99\n")
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "train_mmit.py"), "--data", str(root)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "trainingSet.csv line 17" in result.stderr and "99" in result.stderr


def test_a_run_the_cluster_cannot_place_now_says_what_it_waits_for(caplog):
    cfg = JobConfig().override(num_workers=2, cpus_per_worker=1, decoders=4, cpus_per_decoder=1)
    assert trial_cpus(cfg) == 6  # all four decoders running; the run starts with one
    with caplog.at_level("WARNING", logger="pipeline.train.driver"):
        assert not warn_if_waiting(cfg, {"CPU": 3})
        assert not caplog.text
        # KubeRay's 0-CPU head before the autoscaler adds workers; a GPU run on a GPU group at zero replicas
        assert warn_if_waiting(cfg, {"CPU": 0})
        assert warn_if_waiting(cfg.override(use_gpu=True), {"CPU": 8})
    assert ("waiting for nodes: the run needs 3 CPUs (2 training workers x 1 and one decoder x 1), the cluster has 0 "
            "now; decoding grows to --decoders 4 as CPUs join") in caplog.text  # fmt: skip
    assert "the run needs 2 GPUs, the cluster has 0 now" in caplog.text
