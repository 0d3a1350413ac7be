"""The local stack (infra/local/up.sh, down.sh): moto S3, MLflow with basic auth and S3 artifacts, and a two-node Ray
cluster with token authentication, all on 127.0.0.1.

One stack is started for the module, on its own state directory and on ports probed free, so it never touches a
developer's stack or another Ray on this host; the last test stops it and checks that nothing is left. About 100 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "infra" / "local"
BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
PORT_SPAN = 300  # up.sh uses BASE .. BASE+299

psutil = pytest.importorskip("psutil")

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the local stack scripts target Linux"),
    pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid (util-linux) is needed by up.sh"),
]


def _missing_tools() -> list[str]:
    missing = [name for name in ("moto_server", "mlflow", "ray") if not (BIN / name).exists()]
    try:
        import flask_wtf  # noqa: F401  (MLflow's basic-auth app needs it: mlflow[auth])
    except ImportError:
        missing.append("flask-wtf (pip install 'mlflow[auth]')")
    return missing


def _ports_free(base: int) -> bool:
    for port in range(base, base + PORT_SPAN):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_port_base() -> int:
    for base in (19700, 20100, 20500, 20900, 21300, 21700):
        if _ports_free(base):
            return base
    pytest.skip("no free block of 300 ports below the ephemeral range for the stack")


def _read_env(env_sh: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f'set -a; . "{env_sh}"; env -0'], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _http(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def _stack_pids(state: Path, ray_tmp: str) -> set[int]:
    out = subprocess.run(
        [sys.executable, str(LOCAL / "stack.py"), "pids", str(state), "--ray-tmp", ray_tmp],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(line) for line in out.split()}


def _processes_naming(path: str) -> list[str]:
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid not in mine and any(path in part for part in (proc.info["cmdline"] or [])):
            found.append(f"{proc.pid} {' '.join(proc.info['cmdline'])[:200]}")
    return found


@pytest.fixture(scope="module")
def stack():
    missing = _missing_tools()
    if missing:
        pytest.skip(f"local stack prerequisites missing: {', '.join(missing)}")
    # Short path: Ray's Unix socket paths live under <state>/ray and may not exceed 107 bytes.
    state = Path(tempfile.mkdtemp(prefix="tinstk-", dir="/tmp"))
    base = _free_port_base()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))},
        "TIN_STACK_STATE": str(state),
        "TIN_STACK_PORT_BASE": str(base),
        "TIN_STACK_PYTHON": sys.executable,
    }
    started = time.monotonic()
    try:
        up = subprocess.run(
            ["bash", str(LOCAL / "up.sh")], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert up.returncode == 0, f"up.sh failed:\n{up.stdout}\n{up.stderr}"
        info = {
            "state": state,
            "env": _read_env(state / "env.sh"),
            "script_env": env,
            "base": base,
            "ray_tmp": (state / "ray_tmp_dir").read_text().strip(),
            "up_seconds": time.monotonic() - started,
        }
        yield info
    finally:
        subprocess.run(["bash", str(LOCAL / "down.sh"), "--purge"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def _run_with_stack_env(stack, code: str, **overrides) -> subprocess.CompletedProcess:
    env = {**stack["script_env"], **stack["env"], **overrides}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, cwd=stack["state"]
    )


def test_env_sh_points_at_loopback_and_secrets_are_private(stack):
    env, state = stack["env"], stack["state"]
    base = stack["base"]
    assert env["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{base + 3}"
    assert env["RAY_ADDRESS"] == f"127.0.0.1:{base + 2}"
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) >= 32
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{base}"
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{base + 1}"
    assert env["MLFLOW_TRACKING_USERNAME"] and len(env["MLFLOW_TRACKING_PASSWORD"]) >= 32
    assert (state / "env.sh").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o077 == 0, "state directory readable by others"
    for secret in (state / "secrets").iterdir():
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert (state / "secrets" / "ray_token").read_text().strip() == env["RAY_AUTH_TOKEN"]


def test_ray_cluster_has_two_nodes_reached_with_the_token(stack):
    code = (
        "import json, ray\n"
        "ray.init(log_to_driver=False)\n"  # RAY_ADDRESS and the token come from env.sh
        "nodes = [n for n in ray.nodes() if n['Alive']]\n"
        "print('RESULT', json.dumps({'ips': [n['NodeManagerAddress'] for n in nodes],"
        " 'cpus': ray.cluster_resources().get('CPU')}))\n"
    )
    result = _run_with_stack_env(stack, code)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.split("RESULT", 1)[1])
    assert payload["ips"] == ["127.0.0.1", "127.0.0.1"]
    assert payload["cpus"] == 2


def test_ray_gcs_refuses_a_wrong_token(stack):
    """The GCS answers a driver with a wrong token `Unauthenticated` (ray.init then retries ~20 s before giving up:
    the first refusal is enough here)."""
    env = {**stack["script_env"], **stack["env"], "RAY_AUTH_TOKEN": "0" * 64}
    code = "import ray\nray.init(log_to_driver=False)\nprint('CONNECTED', flush=True)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            seen.append(line)
            if "InvalidAuthToken" in line or "CONNECTED" in line or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait()
    output = "".join(seen)
    assert "CONNECTED" not in output
    assert "Unauthenticated" in output and "InvalidAuthToken" in output, output[-2000:]


def test_dashboard_job_api_answers_only_with_the_token(stack):
    url = stack["env"]["RAY_API_SERVER_ADDRESS"] + "/api/jobs/"
    assert _http(url) == 401
    assert _http(url, {"Authorization": "Bearer " + "0" * 64}) == 403
    assert _http(url, {"Authorization": "Bearer " + stack["env"]["RAY_AUTH_TOKEN"]}) == 200


def test_ray_job_submit_runs_on_the_stack(stack, tmp_path):
    (tmp_path / "probe.py").write_text(
        "import os, ray\n"
        "ray.init()\n"
        "print('NODES', len([n for n in ray.nodes() if n['Alive']]), 'S3', os.environ.get('AWS_ENDPOINT_URL'))\n"
    )
    env = {**stack["script_env"], **stack["env"]}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(tmp_path), "--", "python", "probe.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"NODES 2 S3 {stack['env']['AWS_ENDPOINT_URL']}" in result.stdout


def test_mlflow_refuses_unauthenticated_requests_and_accepts_the_generated_credentials(stack):
    env = stack["env"]
    url = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http(url) == 401
    assert _http(url, _basic(env["MLFLOW_TRACKING_USERNAME"], "wrong-password")) == 401
    assert _http(url, _basic(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])) == 200


def test_mlflow_artifact_lands_in_the_moto_bucket(stack, s3):
    code = (
        "import mlflow\n"
        "mlflow.set_experiment('stack-test')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_text('interlaced', 'probe/hello.txt')\n"
        "print('RUN', run.info.run_id)\n"
    )
    result = _run_with_stack_env(stack, code)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = result.stdout.split("RUN", 1)[1].split()[0]

    env = stack["env"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=env["TIN_STACK_BUCKET"]).get("Contents", [])]
    matching = [k for k in keys if run_id in k and k.endswith("probe/hello.txt")]
    assert matching, keys
    body = s3.get_object(Bucket=env["TIN_STACK_BUCKET"], Key=matching[0])["Body"].read()
    assert body == b"interlaced"


def test_every_listening_socket_of_the_stack_is_on_127_0_0_1(stack):
    pids = _stack_pids(stack["state"], stack["ray_tmp"])
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    ports = {c.laddr.port for c in listening}
    base = stack["base"]
    assert {base, base + 1, base + 2, base + 3} <= ports, sorted(ports)
    assert len(ports) >= 16, sorted(ports)  # moto, MLflow, GCS, dashboard, 2 raylets x 2, agents, metrics
    exposed = [(c.pid, psutil.Process(c.pid).name(), c.laddr) for c in listening if c.laddr.ip not in LOOPBACK]
    assert not exposed, exposed
    # Nothing of the stack listens outside its port block (no Ray default port such as 6379, 8265, 10001, 44217).
    assert all(base <= p < base + PORT_SPAN for p in ports), sorted(ports)


# --- the training job on the stack: S3 data and checkpoints, MLflow server, faults, secrets ---------------------------


class TcpGate:
    """A TCP forwarder on 127.0.0.1 in front of the stack's S3 endpoint. Down, it cuts the open connections and
    resets new ones at once (a store that is away), counting them, so a test can tell that a client met the outage.
    Jobs reach S3 through it; MLflow's server does not."""

    def __init__(self, target_port: int):
        gate = self
        self.is_down = False
        self.refused = 0
        self.open_sockets: set[socket.socket] = set()

        class Forward(socketserver.BaseRequestHandler):
            def handle(self):
                if gate.is_down:
                    gate.refused += 1
                    # RST, as from a host with nothing listening (a FIN would read as an empty HTTP reply)
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.request.close()
                    return
                with socket.create_connection(("127.0.0.1", target_port)) as upstream:
                    gate.open_sockets |= {self.request, upstream}
                    pump = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
                    pump.start()
                    _pump(self.request, upstream)
                    pump.join()
                    gate.open_sockets -= {self.request, upstream}

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Forward)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.is_down = True
        for sock in list(self.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        self.is_down = False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture(scope="module")
def s3(stack):
    import boto3

    env = stack["env"]
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def stack_data(stack, s3, tmp_path_factory):
    """A tiny MMiT dataset uploaded to the stack's bucket; returns its s3:// URI."""
    from pipeline.data.synthetic import SyntheticSpec, generate_mmit

    root = generate_mmit(tmp_path_factory.mktemp("stack") / "mmit",
                         SyntheticSpec(num_train=16, num_val=8, frames=12, size=32))  # fmt: skip
    bucket = stack["env"]["TIN_STACK_BUCKET"]
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"mmit/{path.relative_to(root)}")
    return f"s3://{bucket}/mmit"


@pytest.fixture(scope="module")
def gate(stack):
    gate = TcpGate(int(stack["env"]["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    yield gate
    gate.stop()


def _ray_cli(stack, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env={**stack["script_env"], **stack["env"]}, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _submit_training(stack, data: str, name: str, *flags: str, env_vars: dict | None = None) -> str:
    """`ray job submit --no-wait` of jobs/train_mmit.py on the stack, reading `data` and checkpointing to S3, logging
    to the stack's MLflow server (from the nodes' environment); returns the submission id."""
    bucket = stack["env"]["TIN_STACK_BUCKET"]
    args = ["--data", data, "--storage", f"s3://{bucket}/runs", "--name", name, "--experiment", "stack",
            "--register-as", name, "--batch-size", "4", "--num-workers", "2", "--cpus-per-worker", "0.75",
            "--cpus-per-decoder", "0.25", "--frame-size", "32", "--num-segments", "4", "--warmup-epochs", "0.5",
            *flags]  # fmt: skip
    runtime_env = {"env_vars": env_vars or {}}
    submit = ["job", "submit", "--no-wait", "--submission-id", name, "--working-dir", str(REPO),
              "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/train_mmit.py"]  # fmt: skip
    result = _ray_cli(stack, *submit, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return name


def _job_status(stack, job: str) -> str:
    out = _ray_cli(stack, "job", "status", job).stdout
    # "Status for job 'x': RUNNING" while it runs; "Job 'x' succeeded" (failed, stopped) once it has ended
    match = re.search(rf"Status for job '{job}': (\w+)", out) or re.search(rf"Job '{job}' (\w+)", out)
    assert match, out
    return match.group(1).upper()


def _wait_job(stack, job: str, timeout: float = 600) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while (status := _job_status(stack, job)) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        assert time.monotonic() < deadline, f"job {job} still {status} after {timeout} s"
        time.sleep(3)
    return status, _ray_cli(stack, "job", "logs", job).stdout


def _wait_key(stack, job: str, s3, key: str, timeout: float = 400) -> None:
    """Wait for `key` in the stack's bucket while `job` runs."""
    bucket = stack["env"]["TIN_STACK_BUCKET"]
    deadline = time.monotonic() + timeout
    while s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0:
        status = _job_status(stack, job)
        assert status in {"PENDING", "RUNNING"}, f"job {job} ended ({status}) before s3://{bucket}/{key} appeared"
        assert time.monotonic() < deadline, f"s3://{bucket}/{key} did not appear in {timeout} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def mlflow_client(stack):
    """A client of the stack's MLflow server, with its basic-auth credentials set for this module only."""
    from mlflow.tracking import MlflowClient

    env = stack["env"]
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    old = {name: os.environ.get(name) for name in names}
    os.environ.update({name: env[name] for name in names})
    yield MlflowClient(env["MLFLOW_TRACKING_URI"])
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _run_named(client, name: str):
    experiment = client.get_experiment_by_name("stack").experiment_id
    return client.search_runs([experiment], f"tags.`tin.run_name` = '{name}'")[0]


def _kill_worker_node(stack) -> int:
    """SIGKILL the second node's raylet and everything under it (its workers, agents, object store)."""
    flag = f"--node_manager_port={stack['base'] + 20}"
    raylets = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "raylet" in (proc.info["name"] or "") and flag in line and stack["ray_tmp"] in line:
            raylets.append(proc)
    assert len(raylets) == 1, raylets
    victims = [*raylets[0].children(recursive=True), raylets[0]]
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=20)
    return len(victims)


def test_train_job_on_the_stack_survives_losing_a_worker_node(stack, s3, stack_data, mlflow_client):
    """S3 data and checkpoints, the MLflow server with basic auth: the worker node is killed (its training worker
    with it) once a checkpoint is registered; the node comes back (`up.sh` restarts what is missing), the job resumes
    from the last checkpoint on S3, finishes every epoch and registers the model."""
    bucket = stack["env"]["TIN_STACK_BUCKET"]
    job = _submit_training(stack, stack_data, "stack-kill", "--epochs", "4", "--max-failures", "3")
    _wait_key(stack, job, s3, "runs/stack-kill/checkpoint_manager_snapshot.json")  # a registered checkpoint
    assert _kill_worker_node(stack) >= 2
    up = subprocess.run(["bash", str(LOCAL / "up.sh")], env=stack["script_env"], capture_output=True, text=True,
                        timeout=300)  # fmt: skip
    assert up.returncode == 0 and "starting Ray worker node" in up.stdout, up.stdout + up.stderr
    status, logs = _wait_job(stack, job)
    assert status == "SUCCEEDED", logs[-6000:]
    assert "stack-kill version 1 is the new champion" in logs

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/stack-kill/")["Contents"]}
    assert "runs/stack-kill/epoch-0003/model.pt" in keys, sorted(keys)
    client = mlflow_client
    run = _run_named(client, "stack-kill")
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_map")}) == [0, 1, 2, 3]
    resumed = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_epoch")}
    assert resumed[0] == -1 and resumed[3] >= 0, f"the restarted workers must resume from a checkpoint: {resumed}"
    assert client.get_model_version_by_alias("stack-kill", "champion").version == "1"
    _assert_no_secrets(stack, client, run.info.run_id, logs)


def _alive_nodes(stack) -> int:
    result = _run_with_stack_env(stack, "import ray\nray.init(log_to_driver=False)\n"
                                 "print('ALIVE', sum(n['Alive'] for n in ray.nodes()))\n")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split("ALIVE", 1)[1].split()[0])


def test_a_job_larger_than_the_cluster_waits_for_the_node_that_joins(stack, s3, stack_data):
    """Submitted while the worker node is away, a job whose two training workers (0.75 CPU each) and a decoder do not
    fit the 1-CPU head says what it waits for, waits, and trains once the node joins (`up.sh` starts it)."""
    _kill_worker_node(stack)
    deadline = time.monotonic() + 120
    while _alive_nodes(stack) != 1:  # the GCS marks the killed node dead after missed health checks
        assert time.monotonic() < deadline, "the killed node still counts as alive"
        time.sleep(2)
    job = _submit_training(stack, stack_data, "stack-grow", "--epochs", "1")
    deadline = time.monotonic() + 180
    while "waiting for nodes" not in (logs := _ray_cli(stack, "job", "logs", job).stdout):
        assert _job_status(stack, job) in {"PENDING", "RUNNING"}, logs[-3000:]
        assert time.monotonic() < deadline, f"no line saying what the job waits for:\n{logs[-3000:]}"
        time.sleep(2)
    assert "the run needs 1.75 CPUs (2 training workers x 0.75 and one decoder x 0.25), the cluster has 1 now" in logs
    time.sleep(10)  # it waits rather than fails
    assert _job_status(stack, job) == "RUNNING"
    up = subprocess.run(["bash", str(LOCAL / "up.sh")], env=stack["script_env"], capture_output=True, text=True,
                        timeout=300)  # fmt: skip
    assert up.returncode == 0 and "starting Ray worker node" in up.stdout, up.stdout + up.stderr
    status, logs = _wait_job(stack, job)
    assert status == "SUCCEEDED", logs[-6000:]
    assert "stack-grow version 1 is the new champion" in logs


def _assert_no_secrets(stack, client, run_id: str, logs: str) -> None:
    """No S3 key, MLflow password or Ray token in the run's params, tags or artifacts, nor in the job's logs."""
    env = stack["env"]
    secrets = {name: env[name] for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
                                            "RAY_AUTH_TOKEN")}  # fmt: skip
    assert all(len(value) >= 16 for value in secrets.values()), "the stack's generated secrets are long and unique"
    run = client.get_run(run_id)
    texts = {"params": json.dumps(run.data.params), "tags": json.dumps(run.data.tags), "job logs": logs}
    artifacts = Path(tempfile.mkdtemp(prefix="tin-artifacts-"))
    try:
        import mlflow

        mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(artifacts),
                                            tracking_uri=env["MLFLOW_TRACKING_URI"])  # fmt: skip
        files = [p for p in artifacts.rglob("*") if p.is_file()]
        assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".png" for p in files), files
        for path in files:
            texts[f"artifact {path.relative_to(artifacts)}"] = path.read_bytes().decode("latin-1")
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    assert len(run.data.params) >= 20 and "data" in run.data.params
    leaks = [(where, name) for where, text in texts.items() for name, value in secrets.items() if value in text]
    assert not leaks, f"secrets found: {leaks}"


def test_short_s3_outage_is_retried_and_the_job_finishes(stack, s3, stack_data, gate):
    endpoint = f"http://127.0.0.1:{gate.port}"
    job = _submit_training(stack, stack_data, "stack-blip", "--epochs", "2",
                           env_vars={"AWS_ENDPOINT_URL": endpoint, "TIN_STORAGE_RETRY_SECONDS": "120"})  # fmt: skip
    _wait_key(stack, job, s3, "runs/stack-blip/epoch-0000/")
    gate.down()
    deadline = time.monotonic() + 60  # down until the job has met it (a fixed window can fall between its reads)
    while gate.refused == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(5)
    gate.up()
    status, logs = _wait_job(stack, job)
    assert gate.refused > 0, "the job must have met the outage"
    assert status == "SUCCEEDED", logs[-6000:]
    assert "stack-blip version 1 is the new champion" in logs


def test_lasting_s3_outage_fails_clearly_and_registers_nothing(stack, s3, stack_data, gate, mlflow_client):
    bucket = stack["env"]["TIN_STACK_BUCKET"]
    endpoint = f"http://127.0.0.1:{gate.port}"
    job = _submit_training(stack, stack_data, "stack-down", "--epochs", "3", "--max-failures", "0",
                           env_vars={"AWS_ENDPOINT_URL": endpoint, "TIN_STORAGE_RETRY_SECONDS": "6"})  # fmt: skip
    _wait_key(stack, job, s3, "runs/stack-down/epoch-0000/")
    gate.down()
    try:
        status, logs = _wait_job(stack, job)
    finally:
        gate.up()
    assert status == "FAILED", logs[-6000:]
    assert gate.refused > 0
    message = (
        f"StorageUnavailable: training stopped, nothing registered: storage did not answer (data s3://{bucket}/mmit"
    )
    assert message in logs, logs[-6000:]
    assert not mlflow_client.search_model_versions("name = 'stack-down'"), "no half-trained model is registered"
    assert _run_named(mlflow_client, "stack-down").info.status == "FAILED"


def test_up_is_idempotent(stack):
    before = _stack_pids(stack["state"], stack["ray_tmp"])
    again = subprocess.run(
        ["bash", str(LOCAL / "up.sh")], env=stack["script_env"], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 4, again.stdout
    daemons = {p for p in before if psutil.pid_exists(p) and psutil.Process(p).name() in {"gcs_server", "raylet"}}
    assert len(daemons) == 3  # one GCS, two raylets
    assert daemons <= _stack_pids(stack["state"], stack["ray_tmp"])


def test_down_leaves_nothing_running(stack):
    state, ray_tmp = stack["state"], stack["ray_tmp"]
    procs = []
    for pid in _stack_pids(state, ray_tmp):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    assert len(procs) >= 10
    # A bystander that merely names a file of the stack (like `tail -f <state>/ray/.../raylet.out`) is left alone.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(Path(ray_tmp) / "session_latest" / "logs")]
    )
    try:
        down = subprocess.run(
            ["bash", str(LOCAL / "down.sh")], env=stack["script_env"], capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stdout + down.stderr
        assert bystander.poll() is None, "down.sh stopped a process that is not part of the stack"
    finally:
        bystander.kill()
        bystander.wait()
    survivors = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, survivors
    assert not _processes_naming(str(state)), _processes_naming(str(state))
    assert not _processes_naming(ray_tmp)
    assert not _stack_pids(state, ray_tmp)
    assert not list((state / "pids").glob("*.pid*")) and not (state / "env.sh").exists()
    again = subprocess.run(
        ["bash", str(LOCAL / "down.sh")], env=stack["script_env"], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "stopped 0 process" in again.stdout, again.stdout + again.stderr
