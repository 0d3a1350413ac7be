"""Scoring videos with a registered model on Ray Data: decode tasks cut each video's views, model replicas on an
actor pool (one GPU each where the cluster has GPUs) average the views' probabilities.

    rows (index, uri) --map_batches(view_batch, tasks)--> {index, views [B, V, T, S, S, 3], status}
        --map_batches(ViewScorer, actors)--> {index, probs [B, K], status}

Where decode tasks and replicas are as many (a CPU cluster: one replica per CPU), Ray Data fuses the two steps and
each replica decodes its own videos; GPU replicas always take their clips from separate CPU decode tasks.
A video that cannot be decoded keeps its row, with a non-zero `status` (pipeline.data.dataset.REASONS) and NaN
probabilities, so callers report it rather than crash.
"""

from __future__ import annotations

import mlflow
import numpy as np
import ray
import torch

from pipeline.data.dataset import REASONS, decode_or_skip, task_blocks
from pipeline.data.views import ViewSpec, video_views
from pipeline.registry.tin_pyfunc import ClipClassifier


def load_classifier(model_uri: str, num_segments: int | None = None) -> ClipClassifier:
    """The registered model's ClipClassifier (its torch network and config), optionally for another clip length."""
    classifier = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if num_segments:
        classifier.retime(num_segments)
    return classifier


def view_batch(batch: dict[str, np.ndarray], spec: ViewSpec) -> dict[str, np.ndarray]:
    """map_batches task: decode the views of a batch of rows (bad videos: zero views and their reason code)."""
    uris = [str(uri) for uri in batch["uri"]]
    views, status = zip(*[decode_or_skip(uri, lambda uri=uri: video_views(uri, spec), spec.shape) for uri in uris],
                        strict=True)  # fmt: skip
    return {
        "index": np.asarray(batch["index"], dtype=np.int64),
        "views": np.stack(views),
        "status": np.asarray(status, dtype=np.int8),
    }


class ViewScorer:
    """map_batches actor: one model replica; a video's probability is the mean over its views."""

    def __init__(self, model_uri: str, tracking_uri: str, num_segments: int | None = None) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self.classifier = load_classifier(model_uri, num_segments)
        if torch.cuda.is_available():
            self.classifier.model.cuda()
        self.num_classes = self.classifier.config["num_classes"]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        views, status = batch["views"], batch["status"]
        probs = np.full((len(views), self.num_classes), np.nan, dtype=np.float32)
        good = np.flatnonzero(status == 0)
        if len(good):
            flat = views[good].reshape(-1, *views.shape[2:])  # [B * V, T, S, S, 3]
            probs[good] = self.classifier.scores(flat).reshape(len(good), views.shape[1], -1).mean(axis=1)
        return {"index": batch["index"], "probs": probs, "status": status}


def score_dataset(
    rows: list[dict],
    model_uri: str,
    tracking_uri: str,
    spec: ViewSpec,
    replicas: int = 1,
    decoders: int = 2,
    videos_per_batch: int = 4,
) -> ray.data.Dataset:
    """A Ray Dataset of {index, probs, status} per row of `rows` (dicts with `index` and `uri`), in no set order."""
    gpus = ray.cluster_resources().get("GPU", 0)
    num_blocks = task_blocks(len(rows), videos_per_batch)
    ds = ray.data.from_items([{"index": r["index"], "uri": r["uri"]} for r in rows], override_num_blocks=num_blocks)
    ds = ds.map_batches(
        view_batch,
        fn_kwargs={"spec": spec},
        batch_size=videos_per_batch,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=decoders),
        num_cpus=1,
    )
    return ds.map_batches(
        ViewScorer,
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "num_segments": spec.num_segments},
        batch_size=videos_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=replicas),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )


def collect_scores(ds: ray.data.Dataset, num_rows: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(probs [num_rows, K], status [num_rows]) by row index, from score_dataset's output."""
    probs = np.full((num_rows, num_classes), np.nan, dtype=np.float32)
    status = np.full(num_rows, -1, dtype=np.int8)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        probs[batch["index"]] = batch["probs"]
        status[batch["index"]] = batch["status"]
    if (status < 0).any():
        raise RuntimeError(f"{int((status < 0).sum())} of {num_rows} videos came back unscored")
    return probs, status


def reason(status: int) -> str | None:
    """The reason a video was not scored (None when it was)."""
    return None if status == 0 else REASONS[int(status)]
