"""One way to turn a URI into a filesystem and a path: local paths, file:// and s3://.

S3 goes through s3fs and is configured the standard AWS way (environment, ~/.aws/config, profiles), including
AWS_ENDPOINT_URL for S3-compatible stores (MinIO, moto). Credentials are never passed explicitly here, so they never
appear in this module's arguments, reprs or errors: botocore reads them itself.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pyarrow import fs as pafs

# Where generated data, the local MLflow store and checkpoints go unless configured otherwise.
DEFAULT_CACHE = Path(os.environ.get("TIN_CACHE_DIR", Path.home() / ".cache" / "tin"))


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def s3_options() -> dict:
    """s3fs arguments from the standard AWS environment (no secrets: botocore reads keys itself)."""
    client_kwargs = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    # botocore's adaptive retries: throttling (503 SlowDown) and 5xx answers back off with jitter, then the readers
    # retry for RETRY_SECONDS (see dataset.decode_or_skip).
    retries = {"mode": os.environ.get("AWS_RETRY_MODE", "adaptive"),
               "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "3"))}  # fmt: skip
    options: dict = {"client_kwargs": client_kwargs, "config_kwargs": {"retries": retries}}
    if os.environ.get("AWS_PROFILE"):
        options["profile"] = os.environ["AWS_PROFILE"]
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path, a file:// URI or an s3://bucket/key URI."""
    if uri.startswith("s3://"):
        import s3fs

        return s3fs.S3FileSystem(**s3_options()), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise ValueError(f"unsupported storage URI {uri!r}: use a local path, file:// or s3://")
    return LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI."""
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def open_uri(uri: str, mode: str = "rb"):
    """Open a local path or URI as a file object (a context manager)."""
    fs, path = filesystem(uri)
    return fs.open(path, mode)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


# How long a reader keeps retrying storage that does not answer before the job fails (workers inherit it).
RETRY_SECONDS = float(os.environ.get("TIN_STORAGE_RETRY_SECONDS", "60"))


class StorageUnavailable(ConnectionError):
    """Storage did not answer within RETRY_SECONDS: the job stops (the data is not bad, the store is away)."""


# S3 answers that mean "not now" rather than "not there": throttling and server-side errors.
BUSY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
              "InternalError", "RequestTimeout"}  # fmt: skip


def is_unavailable(error: BaseException) -> bool:
    """A store that does not answer or is overloaded (endpoint down, timeout, throttling, 5xx), as opposed to a
    missing or unreadable object. Wrapped errors (s3fs re-raises boto's as OSError) are judged by their cause."""
    pending, seen = [error], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        if _unavailable(error):
            return True
        seen.add(id(error))
        pending += [error.__cause__, error.__context__]
    return False


def _unavailable(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    try:
        import botocore.exceptions

        # ConnectionClosedError: the endpoint dropped the connection before answering (a store going away)
        closed = botocore.exceptions.ConnectionClosedError
        if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError, closed)):
            return True
        if isinstance(error, botocore.exceptions.ClientError):
            answer = error.response
            status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or answer.get("Error", {}).get("Code") in BUSY_CODES
    except ImportError:
        pass
    try:
        import aiohttp

        return isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError))
    except ImportError:
        return False


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with AWS standard retries that survive pickling. Ray Train ships the storage
    filesystem to its controller and workers by pickle, and a plain S3FileSystem comes back with the default
    retry strategy (3 quick attempts): a store away for a few seconds would then fail the whole run. By default a
    write keeps trying for about RETRY_SECONDS, as the readers do."""

    def __init__(self, max_attempts: int | None = None, **kwargs) -> None:
        max_attempts = max_attempts or attempts_for(RETRY_SECONDS)
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **kwargs)
        self._args = (max_attempts, kwargs)  # endpoint and region only: credentials come from the AWS chain

    def __reduce__(self):
        return _retrying_s3, self._args


def attempts_for(seconds: float) -> int:
    """The attempts whose expected total wait covers `seconds`: AWS standard retries wait uniform(0, min(2**n, 20)) s
    before retry n."""
    waited, retries = 0.0, 0
    while waited < seconds:
        waited += min(2**retries, 20) / 2
        retries += 1
    return retries + 1


def _retrying_s3(max_attempts: int, kwargs: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts, **kwargs)


def pyarrow_filesystem(uri: str):
    """(pyarrow filesystem or None, path) for Ray Train's storage: S3 with the same endpoint and region settings as
    s3fs above; None for local paths (Ray uses them as they are)."""
    if not uri.startswith("s3://"):
        return None, filesystem(uri)[1]
    client = s3_options()["client_kwargs"]
    kwargs = {}
    if "endpoint_url" in client:
        scheme, _, host = client["endpoint_url"].partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    if "region_name" in client:
        kwargs["region"] = client["region_name"]
    return RetryingS3FileSystem(**kwargs), uri[len("s3://") :].rstrip("/")
