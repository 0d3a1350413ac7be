"""The sweep on a real local Ray cluster: three trials, one of them failing on an injected bad configuration, a
summary table, MLflow child runs under one parent, and the best trial's model registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import local_ray
from mlflow.tracking import MlflowClient

from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.registry.tracking import start_run
from pipeline.train.config import JobConfig
from pipeline.train.tune import SweepConfig, SweepJobConfig, concurrent_trials, run_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_ray(tmp_path_factory.mktemp("ray"), num_cpus=4):
        yield


def test_sweep_with_a_failing_trial(cluster, tmp_path):
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=16, num_val=8, frames=12, size=32))
    base = JobConfig().override(
        root=str(root), num_segments=4, frame_size=32, epochs=2, batch_size=4, num_workers=1, decoders=1,
        storage=str(tmp_path / "runs"), mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="sweeps",
        register_as="swept", warmup_epochs=0.5,
    )  # fmt: skip
    # groups=3 with reverse offsets makes 6 groups, which do not divide ResNet-18's 16 interlaced channels: that
    # trial fails in its own process, the others go on.
    sweep = SweepConfig(num_samples=1, grid=True, groups_choices=(1, 2, 3), reverse_choices=(True,),
                        shift_div_choices=(4,), max_concurrent_trials=2)  # fmt: skip
    outcome = run_sweep(SweepJobConfig(**vars(base.override(name="sweep-test")), sweep=sweep))

    assert len(outcome.rows) == 3
    by_groups = {row.config["groups"]: row for row in outcome.rows}
    assert by_groups[3].status == "ERROR" and "do not divide" in by_groups[3].error and by_groups[3].epochs == 0
    for groups in (1, 2):
        assert by_groups[groups].status in ("DONE", "STOPPED") and by_groups[groups].epochs >= 1
        assert 0 <= by_groups[groups].best_val_map <= 1
        assert 0.005 <= by_groups[groups].config["lr"] <= 0.05
    lines = outcome.table.splitlines()
    assert lines[0].split()[:4] == ["trial", "status", "groups", "reverse"] and len(lines) == 5
    best = max((r for r in outcome.rows if r.status != "ERROR"), key=lambda r: r.best_val_map)
    assert outcome.best_trial == best.trial_id

    client = MlflowClient(base.tracking.mlflow_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == best.trial_id
    assert "sweep_summary.txt" in {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")  # fmt: skip
    assert len(children) == 3
    # A trial that ASHA stopped early is recorded as KILLED, one that ran all epochs as FINISHED.
    statuses = sorted(run.info.status for run in children)
    assert statuses[0] == "FAILED" and set(statuses[1:]) <= {"FINISHED", "KILLED"}, statuses
    failed = next(run for run in children if run.info.status == "FAILED")
    assert failed.data.params["groups"] == "3" and "do not divide" in failed.data.tags["error"]
    for run in children:
        if run.info.status != "FAILED":
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_map")][0] == 0

    champion = client.get_model_version_by_alias("swept", "champion")
    assert str(champion.version) == outcome.version == "1"
    best_child = next(run for run in children if run.data.tags["tin.run_name"].endswith(best.trial_id))
    assert champion.run_id == best_child.info.run_id


@pytest.mark.integration
def test_sweep_flags_checked_before_ray(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "tune_mmit.py"), "--num-samples", "0"],
                            capture_output=True, text=True, env={**os.environ, "TIN_CACHE_DIR": str(tmp_path)},
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and "--num-samples must be >= 1" in result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr


def test_child_runs_grouped_by_name_across_pages(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_run(uri, "sweep", "sweep-1", {})
    other = start_run(uri, "sweep", "sweep-2", {})
    names = [f"trial_{i}" for i in range(5)]
    for name in names:
        start_run(uri, "sweep", name, {}, parent_run_id=parent.run_id)
    start_run(uri, "sweep", "trial_x", {}, parent_run_id=other.run_id)  # another sweep's child

    children = parent.child_runs(page_size=2)  # three pages
    assert sorted(children) == names
    assert all(len(runs) == 1 for runs in children.values())


def test_grid_and_optuna_are_refused_together():
    cfg = SweepJobConfig(sweep=SweepConfig(grid=True, search="optuna"))
    with pytest.raises(ValueError, match="--grid and --search optuna"):
        cfg.validate()


def test_concurrent_trials_fit_the_cluster_and_queue_for_nodes_when_none_fit(caplog):
    gpu = JobConfig().override(use_gpu=True, num_workers=2)
    cpu = JobConfig().override(num_workers=1, cpus_per_worker=1, decoders=2, cpus_per_decoder=1)  # 3 CPUs a trial
    assert concurrent_trials(gpu, SweepConfig(), {"CPU": 16, "GPU": 4}) == 2
    assert concurrent_trials(cpu, SweepConfig(), {"CPU": 8}) == 2
    assert concurrent_trials(cpu, SweepConfig(max_concurrent_trials=5), {"CPU": 8}) == 5
    # KubeRay's 0-CPU head with its GPU group at zero replicas: no limit, Tune queues trials for the autoscaler.
    with caplog.at_level("WARNING", logger="pipeline.train.tune"):
        assert concurrent_trials(gpu, SweepConfig(), {"CPU": 0}) == 0
    assert "waiting for nodes: a trial needs 2 GPUs, the cluster has 0 CPUs and 0 GPUs now" in caplog.text
