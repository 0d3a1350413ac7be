"""The multi-view test of registered models, as the paper reports: K clips x 1 or 3 crops per video, probabilities
averaged over the views and over an ensemble's models (TIN_En: models of 8 and 16 segments), scored on Ray Data and
logged as an MLflow run linked to the model versions it evaluated."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import mlflow
import numpy as np
from mlflow.store.artifact.utils.models import get_model_name_and_version

from pipeline.data.annotations import Manifest
from pipeline.data.dataset import manifest_rows
from pipeline.data.views import ViewSpec
from pipeline.registry.scoring import collect_scores, load_classifier, reason, score_dataset
from tin_core import ap_per_class, classification_metrics

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict[str, float]  # val_map, val_map_classes (+ val_top1, val_top5, val_mean_class_accuracy)
    ap_per_class: dict[str, float]
    views: int  # views per video and model
    videos: int  # videos scored
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> videos that could not be decoded
    probs: np.ndarray | None = None  # [videos in the manifest, K]; NaN rows for skipped videos
    run_id: str = ""

    def summary(self) -> dict:
        return {**self.metrics, "views": self.views, "videos": self.videos, "skipped": self.skipped,
                "run_id": self.run_id}  # fmt: skip


def ensemble_scores(
    model_uris: list[str],
    manifest: Manifest,
    tracking_uri: str,
    clips: int,
    crops: int,
    num_segments: int | None = None,
    replicas: int = 1,
    decoders: int = 2,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(probs [V, K] averaged over views and models, status [V], views per model) for the manifest's videos."""
    rows = manifest_rows(manifest)
    total, status, views = None, np.zeros(len(rows), np.int8), 0
    for uri in model_uris:
        config = load_classifier(uri, num_segments).config  # fails here, before any decoding, on a wrong T
        if config["class_names"] != manifest.class_names:
            raise ValueError(f"model {uri} was trained on other classes than the dataset's {manifest.num_classes}")
        spec = ViewSpec.of_model(config, clips, crops, num_segments)
        views = spec.views
        logger.info("scoring %d videos x %d views with %s", len(rows), views, uri)
        ds = score_dataset(rows, uri, tracking_uri, spec, replicas, decoders)
        probs, model_status = collect_scores(ds, len(rows), manifest.num_classes)
        total = probs if total is None else total + probs
        status = np.where(status == 0, model_status, status)
    return total / len(model_uris), status, views


def targets_of(manifest: Manifest) -> np.ndarray:
    """Multi-hot [V, K] for multi-label data, class ids [V] otherwise."""
    if not manifest.multi_label:
        return np.array([r.labels[0] for r in manifest.records], dtype=np.int64)
    y = np.zeros((len(manifest.records), manifest.num_classes), np.float32)
    for i, record in enumerate(manifest.records):
        y[i, list(record.labels)] = 1
    return y


def metrics_of(probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> tuple[dict, dict]:
    """(metrics with `val_` names, AP per class name) of the scored videos."""
    metrics = {f"val_{k}": v for k, v in classification_metrics(probs, targets).items()}
    return metrics, dict(zip(class_names, ap_per_class(probs, targets), strict=True))


def evaluate(
    model_uris: list[str],
    manifest: Manifest,
    tracking_uri: str,
    clips: int = 1,
    crops: int = 1,
    num_segments: int | None = None,
    replicas: int = 1,
    decoders: int = 2,
) -> Evaluation:
    probs, status, views = ensemble_scores(
        model_uris, manifest, tracking_uri, clips, crops, num_segments, replicas, decoders
    )
    good = status == 0
    if not good.any():
        raise RuntimeError(f"none of the {len(status)} videos could be decoded")
    skipped = Counter(reason(s) for s in status[~good])
    metrics, per_class = metrics_of(probs[good], targets_of(manifest)[good], manifest.class_names)
    return Evaluation(metrics, per_class, views, int(good.sum()), dict(skipped), probs)


def logged_model_id(version) -> str | None:
    """The MLflow 3 logged model behind a registered version (stores that leave `model_id` empty keep it in the
    version's `models:/<model_id>` source)."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def log_evaluation(result: Evaluation, model_uris: list[str], manifest: Manifest, experiment: str, params: dict) -> str:
    """An MLflow run of the evaluation: params, metrics (also on each evaluated model version's logged model),
    per-class AP, a confusion matrix for single-label data; each model version is tagged with the run."""
    from pipeline.registry.plots import plot_confusion

    client = mlflow.MlflowClient()
    versions = [client.get_model_version(*get_model_name_and_version(client, uri)) for uri in model_uris]
    # The experiment by id, not mlflow.set_experiment, which would leave MLFLOW_EXPERIMENT_ID in the environment.
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({**params, "views": result.views, "videos": result.videos})
        mlflow.set_tags({"models": json.dumps([f"{v.name}/{v.version}" for v in versions]),
                         "skipped_videos": json.dumps(result.skipped)})  # fmt: skip
        # On the run, and linked to each version's logged model (MLflow 3) where it has one.
        model_ids = [m for m in map(logged_model_id, versions) if m]
        for model_id in model_ids:
            mlflow.log_metrics(result.metrics, model_id=model_id)
        if not model_ids:
            mlflow.log_metrics(result.metrics)
        for version in versions:
            client.set_model_version_tag(version.name, version.version, "evaluation_run_id", run.info.run_id)
        mlflow.log_dict(result.ap_per_class, "ap_per_class.json")
        if not manifest.multi_label and result.probs is not None:
            good = ~np.isnan(result.probs).any(axis=1)
            labels = targets_of(manifest)[good]
            figure = plot_confusion(labels, result.probs[good].argmax(axis=1), manifest.class_names)
            mlflow.log_figure(figure, "confusion_matrix.png")
    return run.info.run_id
