"""MLflow: the run of a training job, its per-epoch metrics, artifacts, the logged model and its registration.

Metric names are stable (dashboards read them): train_loss, val_map (mAP over videos, the authors' MMiT metric),
val_map_classes, val_top1, val_top5 (single-label data), clips_per_s, data_wait_fraction, each with the epoch as
step. Only the driver and rank 0 write here. Nothing secret is logged: the config holds no credentials, and a
tracking URI with a password in it is logged without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.data.storage import DEFAULT_CACHE

logger = logging.getLogger(__name__)

EPOCH_METRICS = (
    "train_loss", "val_map", "val_map_classes", "val_top1", "val_top5", "clips_per_s", "data_wait_fraction",
    "lr", "bad_videos", "val_videos", "train_seconds", "val_seconds", "resumed_from_epoch",
)  # fmt: skip
CHAMPION = "champion"
RUN_NAME_TAG = "tin.run_name"


def tracking_uri(explicit: str = "") -> str:
    """--mlflow-uri, else $MLFLOW_TRACKING_URI, else a sqlite file in the cache (MLflow refuses a bare ./mlruns)."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_CACHE / 'mlflow.db'}"


def redact(uri: str) -> str:
    """A URI without the user:password@ part."""
    return re.sub(r"//[^/@]*@", "//", uri)


@dataclass
class Tracker:
    """A handle on one MLflow run that can travel to the rank-0 worker (it is just the URI and run id)."""

    uri: str
    run_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        now = int(time.time() * 1000)
        rows = [Metric(k, float(metrics[k]), now, epoch) for k in EPOCH_METRICS if k in metrics]
        self.client.log_batch(self.run_id, metrics=rows)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def child_runs(self, page_size: int = 1000) -> dict[str, list]:
        """This run's MLflow child runs (a sweep's trials) by run name, fetched in one paged search."""
        client = self.client
        experiment_id = client.get_run(self.run_id).info.experiment_id
        query = f"tags.`mlflow.parentRunId` = '{self.run_id}'"
        children: dict[str, list] = {}
        token = None
        while True:
            page = client.search_runs([experiment_id], filter_string=query, max_results=page_size, page_token=token)
            for run in page:
                children.setdefault(run.data.tags.get(RUN_NAME_TAG, ""), []).append(run)
            token = page.token
            if not token:
                return children


def start_run(uri: str, experiment: str, run_name: str, params: dict, parent_run_id: str | None = None) -> Tracker:
    """The MLflow run named `run_name` in `experiment`: an unfinished one is resumed (same --name), else a new one.

    Every config value is logged as a param."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, _artifact_location(uri))
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", order_by=["attributes.start_time DESC"]
    )
    resumable = [r for r in runs if r.info.status != "FINISHED"]
    if resumable:
        run_id = resumable[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        logger.info("resuming MLflow run %s (%s)", run_name, run_id)
    else:
        tags = {RUN_NAME_TAG: run_name, "mlflow.runName": run_name}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
        safe = {k: redact(str(v)) if isinstance(v, str) else v for k, v in params.items()}
        for start in range(0, len(safe), 90):  # log_batch takes at most 100 params
            batch = list(safe.items())[start : start + 90]
            client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in batch])
    return Tracker(uri, run_id)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database (MLflow's default is ./mlruns in the current
    directory, wherever that is); a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def finish_run(tracker: Tracker, status: str = "FINISHED") -> None:
    tracker.client.set_terminated(tracker.run_id, status=status)


def _still_running(tracker: Tracker) -> bool:
    try:
        return tracker.client.get_run(tracker.run_id).info.status == "RUNNING"
    except Exception:  # the store is away: end it as if running (that call reports the store's error)
        return True


@contextlib.contextmanager
def finishing(tracker: Tracker, tag_error: bool = False):
    """End the run FINISHED when the block completes; on any error end it FAILED (tagged with the error if
    `tag_error`) and re-raise, unless its end is already recorded: a Tune trial ended after its last report can be
    interrupted just after the sweep's driver recorded how it ended."""
    try:
        yield tracker
    except BaseException as error:
        if _still_running(tracker):
            if tag_error:
                tracker.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
            finish_run(tracker, "FAILED")
        raise
    finish_run(tracker)


def pyfunc_requirements() -> list[str]:
    """The distributions the registered model imports (tin_pyfunc and tin_core, and pandas, which mlflow.pyfunc
    imports but mlflow-skinny does not require), at this environment's versions."""
    from importlib.metadata import version

    pins = {name: version(name).split("+")[0] for name in ("torch", "torchvision", "numpy", "mlflow-skinny", "pandas")}
    return [f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}", f"numpy>={pins['numpy']}",
            f"pandas>={pins['pandas']}", f"mlflow-skinny=={pins['mlflow-skinny']}"]  # fmt: skip


def log_and_register_model(
    tracker: Tracker,
    weights_path: Path,
    model_config: dict,
    register_as: str,
    val_map: float,
    example,
) -> tuple[str, bool, str]:
    """Log the pyfunc model to the run, register a new version, and move the `champion` alias to it only if its
    validation mAP beats the current champion's. `example` (uint8 clips) is logged as one clip of at most 32 px.
    Returns (version, became_champion, message)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from pipeline.registry.serving import MODEL_CONFIG, PYFUNC_CODE, WEIGHTS

    mlflow.set_tracking_uri(tracker.uri)
    step = max(1, min(example.shape[2:4]) // 32)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "model_config.json"
        config_path.write_text(json.dumps(model_config))
        # Any frame size is accepted (the model crops to its own); the clip length is the model's.
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, model_config["model"]["num_segments"], -1, -1, 3))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model_config["num_classes"]))]),
        )
        with mlflow.start_run(run_id=tracker.run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_CODE),
                artifacts={WEIGHTS: str(weights_path), MODEL_CONFIG: str(config_path)},
                code_paths=[str(Path(__file__).resolve().parents[2] / "tin_core")],
                signature=signature,
                input_example=np.ascontiguousarray(example[:1, :, ::step, ::step]),
                pip_requirements=pyfunc_requirements(),
                metadata={"val_map": val_map, "class_names": model_config["class_names"]},
            )
    client = tracker.client
    version = str(mlflow.register_model(info.model_uri, register_as, tags={"val_map": f"{val_map:.6f}"}).version)
    client.set_model_version_tag(register_as, version, "run_id", tracker.run_id)
    try:
        champion = client.get_model_version_by_alias(register_as, CHAMPION)
        champion_map = float(champion.tags.get("val_map", "-inf"))
    except mlflow.exceptions.MlflowException:
        champion, champion_map = None, float("-inf")
    if champion is None or val_map > champion_map:
        client.set_registered_model_alias(register_as, CHAMPION, version)
        before = f"version {champion.version} (val_map {champion_map:.4f})" if champion else "no champion"
        message = f"{register_as} version {version} is the new champion: val_map {val_map:.4f} beats {before}"
        return version, True, message
    message = (
        f"{register_as} version {version} registered (val_map {val_map:.4f}); champion stays version "
        f"{champion.version} (val_map {champion_map:.4f})"
    )
    return version, False, message


def registered_weights(model_uri: str, uri: str) -> str:
    """The local weights file (a state dict in our layout) of a logged or registered model (models:/...)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri.rstrip('/')}/artifacts",
                                                     tracking_uri=uri))  # fmt: skip
    weights = sorted(p for p in local.rglob("*.pt"))
    if not weights:
        raise ValueError(f"--init-from {model_uri}: the model has no weights file")
    return str(weights[0])
