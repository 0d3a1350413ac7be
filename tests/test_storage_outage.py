"""An S3 endpoint that goes away: a short outage is retried, a lasting one stops with a clear error instead of
counting videos as bad."""

from __future__ import annotations

import pickle
import threading
import time

import boto3
import numpy as np
import pytest
import s3fs
from conftest import free_port
from moto.server import ThreadedMotoServer

from pipeline.data import storage
from pipeline.data.dataset import ClipDecoder, ClipSpec
from pipeline.data.synthetic import SyntheticSpec, generate_mmit


@pytest.fixture
def s3_clip(tmp_path, monkeypatch):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY":
                       "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=2, num_val=1, frames=12, size=32))
    clip = next((root / "videos").rglob("*.mp4"))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="outage")
    client.upload_file(str(clip), "outage", "clip.mp4")
    yield server, port, "s3://outage/clip.mp4"
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def decoder() -> ClipDecoder:
    return ClipDecoder(ClipSpec(num_segments=4, short_side=36, crop_size=32), 3, True, train=False)


@pytest.mark.integration
def test_short_outage_is_retried(s3_clip, monkeypatch):
    server, port, uri = s3_clip
    monkeypatch.setattr(storage, "RETRY_SECONDS", 90.0)
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    restart = threading.Timer(4.0, lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=port).start())
    restart.start()  # moto keeps its buckets in this process: the restarted endpoint serves the same object
    start = time.monotonic()
    clip, status = decoder().decode(uri)
    assert status == 0 and clip.shape == (4, 32, 32, 3) and clip.any()
    assert time.monotonic() - start >= 4.0, "the read must have waited for the endpoint to come back"


def test_lasting_outage_stops_with_a_clear_error(s3_clip, monkeypatch):
    server, _, uri = s3_clip
    monkeypatch.setattr(storage, "RETRY_SECONDS", 3.0)
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(storage.StorageUnavailable, match="storage did not answer for 3 s reading s3://outage/clip.mp4"):
        decoder().decode(uri)


def test_lasting_outage_stops_a_batch_at_once(s3_clip, monkeypatch):
    """Through a whole batch, as a decode task runs it: the first outage error ends
    the batch; the other videos are not each retried for RETRY_SECONDS in turn."""
    server, _, uri = s3_clip
    monkeypatch.setattr(storage, "RETRY_SECONDS", 3.0)
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    batch = {"uri": np.array([uri] * 6), "labels": np.array([[0]] * 6), "index": np.arange(6)}
    start = time.monotonic()
    with pytest.raises(storage.StorageUnavailable, match="s3://outage/clip.mp4"):
        decoder()(batch)
    assert time.monotonic() - start < 9.0, "at most one retry period per thread, not one per video"


def test_missing_object_is_a_bad_video_not_an_outage(s3_clip):
    clip, status = decoder().decode("s3://outage/missing.mp4")
    assert status != 0 and not np.any(clip)


@pytest.mark.integration
def test_checkpoint_filesystem_keeps_retrying_after_pickling(s3_clip):
    """Ray Train pickles the storage filesystem to its controller and workers; the copy must still ride out a short
    outage (a plain pyarrow S3FileSystem comes back with 3 quick attempts and fails the run)."""
    server, port, _ = s3_clip
    fs, path = storage.pyarrow_filesystem("s3://outage/runs")
    copy = pickle.loads(pickle.dumps(fs))
    assert isinstance(copy, storage.RetryingS3FileSystem)
    server.stop()
    restart = threading.Timer(4.0, lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=port).start())
    restart.start()
    start = time.monotonic()
    with copy.open_output_stream(f"{path}/checkpoint_manager_snapshot.json") as out:
        out.write(b"{}")
    assert time.monotonic() - start >= 4.0, "the write must have waited for the endpoint to come back"
    with fs.open_input_stream(f"{path}/checkpoint_manager_snapshot.json") as back:
        assert back.read() == b"{}"


def test_a_run_failed_by_storage_names_it():
    from ray.train import ControllerError, WorkerGroupError

    from pipeline.train.results import storage_failure

    upload = OSError("When initiating multiple part upload for key 'runs/a/epoch-0001/model.pt' in bucket 'b': AWS "
                     "Error NETWORK_CONNECTION during CreateMultipartUpload operation: curlCode: 7")  # fmt: skip
    assert "NETWORK_CONNECTION" in storage_failure(WorkerGroupError("worker 1 failed", {1: upload}))
    reader = storage.StorageUnavailable("storage did not answer for 6 s reading s3://b/v.mp4: refused")
    assert storage_failure(ControllerError(reader)) == "storage did not answer for 6 s reading s3://b/v.mp4: refused"
    assert storage_failure(WorkerGroupError("worker 0 failed", {0: ValueError("bad shape")})) is None


def test_dropped_and_refused_connections_count_as_outages():
    import aiohttp
    import botocore.exceptions

    assert storage.is_unavailable(botocore.exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1:9/b/k"))
    assert storage.is_unavailable(botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert storage.is_unavailable(aiohttp.ServerDisconnectedError())
    assert not storage.is_unavailable(FileNotFoundError("s3://b/missing.mp4"))


class SlowDownGate:
    """A proxy in front of moto that answers 503 SlowDown, as S3 does under load, until `busy_until`."""

    def __init__(self, upstream: str) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        gate = self
        self.busy_until = 0.0
        self.refused = 0
        host, port = urlsplit(upstream).hostname, urlsplit(upstream).port

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if time.monotonic() < gate.busy_until:
                    gate.refused += 1
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                connection = http.client.HTTPConnection(host, port, timeout=30)
                connection.request(self.command, self.path, body, dict(self.headers))
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                # A HEAD answer has no body but the object's length.
                self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))  # fmt: skip
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def throttled_clip(s3_clip, monkeypatch):
    server, port, uri = s3_clip
    gate = SlowDownGate(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", gate.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # botocore's own retries, before the reader's
    s3fs.S3FileSystem.clear_instance_cache()
    yield gate, uri
    gate.server.shutdown()


def test_throttling_is_retried_and_never_a_bad_video(throttled_clip, monkeypatch):
    gate, uri = throttled_clip
    monkeypatch.setattr(storage, "RETRY_SECONDS", 60.0)
    gate.busy_until = time.monotonic() + 3.0
    clip, status = decoder().decode(uri)
    assert status == 0 and clip.any() and gate.refused >= 3


def test_lasting_throttling_stops_with_a_clear_error(throttled_clip, monkeypatch):
    gate, uri = throttled_clip
    monkeypatch.setattr(storage, "RETRY_SECONDS", 2.0)
    gate.busy_until = time.monotonic() + 3600
    with pytest.raises(storage.StorageUnavailable, match="Service Unavailable|SlowDown|reduce your request rate"):
        decoder().decode(uri)


def test_throttling_and_server_errors_count_as_outages():
    from botocore.exceptions import ClientError

    def answer(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert storage.is_unavailable(answer("SlowDown", 503)) and storage.is_unavailable(answer("InternalError", 500))
    assert not storage.is_unavailable(answer("NoSuchKey", 404)) and not storage.is_unavailable(answer("403", 403))
    try:  # s3fs re-raises boto's error as an OSError: judged by its cause
        try:
            raise answer("SlowDown", 503)
        except ClientError as e:
            raise OSError(5, "Please reduce your request rate.") from e
    except OSError as wrapped:
        assert storage.is_unavailable(wrapped)
