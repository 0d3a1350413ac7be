"""Shared test fixtures. Real clips and annotation samples live in ../shared beside the checkout (CI has it too);
tests that need them skip cleanly when it is absent."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIN_SHARED_DIR", REPO.parent / "shared"))


# Fixtures that start a Ray cluster: tests using them are marked `cluster` (`make test-fast` leaves them out).
CLUSTER_FIXTURES = {"cluster", "ray_cluster", "head", "stack", "gpu_cluster"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers that must be told their port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    path = SHARED / "videos"
    if not path.is_dir():
        pytest.skip(f"real clips not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_annotations() -> Path:
    path = SHARED / "annotations"
    if not path.is_dir():
        pytest.skip(f"annotation samples not found at {path}")
    return path


@contextlib.contextmanager
def local_ray(temp_dir: Path, num_cpus: int, env: dict[str, str] | None = None, **init_args):
    """One fresh local Ray cluster, never an existing one: `address="local"` ignores a `RAY_ADDRESS` or
    /tmp/ray/ray_current_cluster left by another module. Token auth is disabled explicitly (loopback only, lives for
    one module; the job-submission and local-stack tests run with token auth on). `env` is set in this process for
    the cluster's life; it and `RAY_ADDRESS` (pinned by the training job's `connect_ray`) are restored after."""
    import ray  # here, not at the top: the GPU check runs the CUDA tests where Ray may not be installed

    env = {"RAY_AUTH_MODE": "disabled", **(env or {})}
    old = {k: os.environ.get(k) for k in [*env, "RAY_ADDRESS"]}
    os.environ.update(env)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR",
             _temp_dir=str(temp_dir), **init_args)  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def moto_s3():
    """A real S3 endpoint for the module: moto's server on 127.0.0.1 (as s3fs's own tests do)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables pointing boto3, s3fs and pyarrow at a test endpoint."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@contextlib.contextmanager
def current_tracking_uri(uri: str):
    """mlflow.set_tracking_uri for a block: MLflow keeps the URI (and an experiment id) in the environment, where
    later test modules would inherit them."""
    import mlflow

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    old = {k: os.environ.get(k) for k in keys}
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old["MLFLOW_TRACKING_URI"]:
            mlflow.set_tracking_uri(old["MLFLOW_TRACKING_URI"])
