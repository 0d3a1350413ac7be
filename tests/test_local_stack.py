"""The local stack (infra/local/up.sh, down.sh): moto S3, MLflow with basic auth and S3 artifacts, and a two-node Ray
cluster with token authentication, all on 127.0.0.1.

One stack is started for the module, on its own state directory and on ports probed free, so it never touches a
developer's stack or another Ray on this host; the last test stops it and checks that nothing is left. About 100 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def test_mlflow_artifact_lands_in_the_moto_bucket(stack):
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

    import boto3

    env = stack["env"]
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
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
