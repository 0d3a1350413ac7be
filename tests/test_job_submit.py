"""`ray job submit --working-dir . -- python jobs/train_mmit.py` against a `ray start --head` cluster with token
authentication on, end to end on tiny data."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

from pipeline.data.synthetic import SyntheticSpec, generate_mmit

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.sys.executable).parent


def processes_under(temp_dir: Path) -> list[psutil.Process]:
    """Every process of the cluster: those naming its unique temp dir on their command line, and their children."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in arg for arg in proc.info["cmdline"] or []):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head started with `ray start --head` on free loopback ports, token auth on; stopped by PID."""
    temp_dir = Path("/tmp") / f"tin-submit-{secrets.token_hex(4)}"  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(16)
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "4",
         "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=180,
    )  # fmt: skip
    yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "temp_dir": temp_dir}
    for proc in processes_under(temp_dir):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes_under(temp_dir), timeout=20)
    assert not processes_under(temp_dir), "the test cluster left processes behind"


def submit(head: dict, *args: str, token: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(head["env"])
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head["address"], "--working-dir", str(REPO), "--", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
    )  # fmt: skip


def test_job_submit_trains_and_registers(head, tmp_path):
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=16, num_val=8, frames=12, size=32))
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = submit(
        head, "python", "jobs/train_mmit.py", "--data", str(root), "--epochs", "1", "--batch-size", "4",
        "--num-workers", "2", "--cpus-per-worker", "0.5", "--decoders", "1", "--frame-size", "32",
        "--storage", str(tmp_path / "checkpoints"), "--name", "submitted", "--mlflow-uri", mlflow_uri,
        "--register-as", "submitted-model",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "succeeded" in output
    assert "submitted-model version 1 is the new champion" in output
    assert "tin_core: no compiled interlace kernel" not in output, "the job must use the compiled op"
    version = MlflowClient(mlflow_uri).get_model_version_by_alias("submitted-model", "champion")
    assert str(version.version) == "1"
    assert (tmp_path / "checkpoints" / "submitted" / "epoch-0000" / "model.pt").is_file()


def test_job_submit_without_token_is_refused(head):
    result = submit(head, "python", "-c", "print('should not run')", token="0" * 32, timeout=120)
    assert result.returncode != 0
    assert "should not run" not in result.stdout
