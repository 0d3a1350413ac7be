"""An Optuna sweep interrupted (Ctrl-C) after its first trial, then resumed by rerunning it under the same name: the
finished trial kept, the other run, one MLflow sweep run; Tune's trial table shows the epoch summary. Its own cluster:
the other sweep module's in-process driver keeps its stopped trials' worker groups reserved until it exits (Ray frees
them through the dashboard's state API, which test clusters run without)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from conftest import local_ray
from mlflow.tracking import MlflowClient

from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.train.config import JobConfig
from pipeline.train.tune import SweepConfig, SweepJobConfig, run_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_ray(tmp_path_factory.mktemp("ray"), num_cpus=4):
        yield


def trials_done(experiment_dir: Path, epochs: int) -> int:
    """Trials whose Tune results (result.json in the sweep's storage) reached the last epoch."""
    return sum(any(json.loads(line).get("epochs_done") == epochs for line in path.read_text().splitlines())
               for path in experiment_dir.glob("*/result.json"))  # fmt: skip


def trial_runs(client: MlflowClient, experiment: str, sweep: str) -> list:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if r.data.tags.get("tin.run_name", "").startswith(f"{sweep}-")]


def test_an_interrupted_optuna_sweep_resumes_under_its_name(cluster, tmp_path):
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=16, num_val=8, frames=12, size=32))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--data", str(root), "--num-segments", "4", "--frame-size", "32", "--epochs", "2", "--batch-size", "4",
             "--num-workers", "1", "--decoders", "1", "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri,
             "--experiment", "sweeps", "--register-as", "resumed", "--warmup-epochs", "0.5", "--name", "tpe",
             "--search", "optuna", "--num-samples", "2", "--groups-choices", "1", "2", "--reverse-choices", "True",
             "--shift-div-choices", "4", "--max-concurrent-trials", "1", "--grace-period", "2"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "TIN_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, str(REPO / "jobs" / "tune_mmit.py"), *flags]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(uri)
    deadline = time.monotonic() + 600
    while not trials_done(tmp_path / "runs" / "tpe", 2) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    job.send_signal(signal.SIGINT)  # as Ctrl-C: Tune saves the sweep's state and stops
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 130, output[-3000:]
    assert "rerun with --name tpe to resume it" in output
    # Tune's trial table carries the training job's epoch summary.
    header = [line for line in output.splitlines() if "Trial name" in line][-1]  # the last table, after results
    columns = [c.strip() for c in header.split("|")]
    expected = {"epoch", "train_loss", "val_map", "best", "best @", "clips/s", "data_wait", "eta", "groups", "lr"}
    assert expected <= set(columns), header
    assert trials_done(tmp_path / "runs" / "tpe", 2) == 1
    first = [r for r in trial_runs(client, "sweeps", "tpe") if len(client.get_metric_history(r.info.run_id,
             "val_map")) == 2]  # fmt: skip
    assert len(first) == 1

    cfg = SweepJobConfig(**vars(JobConfig().override(
        root=str(root), num_segments=4, frame_size=32, epochs=2, batch_size=4, num_workers=1, decoders=1,
        storage=str(tmp_path / "runs"), mlflow_uri=uri, experiment="sweeps", register_as="resumed",
        warmup_epochs=0.5, name="tpe")), sweep=SweepConfig(search="optuna", num_samples=2, groups_choices=(1, 2),
        reverse_choices=(True,), shift_div_choices=(4,), max_concurrent_trials=1, grace_period=2))  # fmt: skip
    outcome = run_sweep(cfg)

    assert len(outcome.rows) == 2 and all(row.status == "DONE" and row.epochs == 2 for row in outcome.rows)
    trial_names = {f"tpe-{row.trial_id}" for row in outcome.rows}
    assert first[0].data.tags["tin.run_name"] in trial_names
    # The finished trial was kept, not trained again; the sweep has one MLflow run and two trial runs.
    assert [m.step for m in client.get_metric_history(first[0].info.run_id, "val_map")] == [0, 1]
    sweeps = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                filter_string="tags.`tin.run_name` = 'tpe'")  # fmt: skip
    assert [r.info.run_id for r in sweeps] == [outcome.parent_run_id]
    assert sweeps[0].data.params["sweep_search"] == "optuna"
    trials = trial_runs(client, "sweeps", "tpe")
    assert sorted(r.data.tags["tin.run_name"] for r in trials) == sorted(trial_names)
    assert all(r.info.status == "FINISHED" for r in trials)
    assert list((tmp_path / "runs" / "tpe").glob("searcher-state-*.pkl"))  # Optuna's study, restored on resume

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "that sweep already finished" in again.stderr
