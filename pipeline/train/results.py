"""After `TorchTrainer.fit()`: the best checkpoint, its artifacts and registered model, the failures that stop a job
with a clear reason, and the summary the job prints."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
import torch
import yaml

from pipeline.data import storage
from pipeline.data.annotations import Manifest
from pipeline.data.dataset import ClipDecoder, TooManyBadVideos
from pipeline.data.synthetic import PAIRS
from pipeline.data.transforms import normalize
from pipeline.registry.plots import plot_confusion_counts, plot_offsets, plot_weights
from pipeline.registry.serving import model_config
from pipeline.registry.tracking import Tracker, log_and_register_model, redact
from pipeline.train.config import JobConfig, to_dict
from pipeline.train.engine import MODEL_FILE
from pipeline.train.loop import META_FILE, clip_spec
from tin_core import complexity_report, interlace_trace

if TYPE_CHECKING:
    from pipeline.train.driver import Datasets

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_id: str
    tracking_uri: str
    experiment: str
    metrics: dict  # the best epoch's (the registered model's)
    last_metrics: dict  # the last epoch's
    ap_per_class: dict[str, float]  # validation AP of each class at the best epoch
    checkpoint: str
    model_name: str  # registered as
    version: str
    champion: bool
    message: str


def best_checkpoint(result) -> tuple[ray.train.Checkpoint, dict]:
    candidates = [(c, m) for c, m in result.best_checkpoints if m.get("val_map") is not None]
    if not candidates:
        raise RuntimeError("training reported no checkpoint with a validation mAP")
    return max(candidates, key=lambda cm: (cm[1]["val_map"], cm[1]["epoch"]))


def sample_clips(cfg: JobConfig, manifest: Manifest, count: int = 8) -> np.ndarray:
    """A few decoded validation clips (uint8 [N, T, H, W, 3]) for plots and the model's input example."""
    decoder = ClipDecoder(clip_spec(cfg), manifest.num_classes, manifest.multi_label, train=False)
    clips = [decoder.decode(r.uri) for r in manifest.records[: count * 2]]
    good = [clip for clip, status in clips if status == 0][:count]
    if not good:
        raise RuntimeError("no validation clip decodes: cannot log the model")
    return np.stack(good)


def log_results(cfg: JobConfig, tracker: Tracker, datasets: Datasets, checkpoint_dir: Path, meta: dict) -> tuple:
    """Artifacts (config, complexity, per-class AP, Figure-5 plots) and the registered model."""
    num_classes = datasets.train.num_classes
    tracker.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")
    architecture = dataclasses.replace(cfg.model, pretrained="", init_from="")
    models = {cfg.model.arch: architecture.build(num_classes)}
    if cfg.model.arch != "tsn":
        models["tsn (same backbone)"] = dataclasses.replace(architecture, arch="tsn").build(num_classes)
    shape = (1, cfg.model.num_segments, 3, cfg.data.frame_size, cfg.data.frame_size)
    tracker.log_text(complexity_report(models, shape) + "\n", "complexity.txt")
    names = datasets.train.class_names
    tracker.log_dict({names[k]: ap for k, ap in enumerate(meta["ap_per_class"])}, "val_ap_per_class.json")
    if "confusion" in meta:  # single-label data
        tracker.log_figure(plot_confusion_counts(np.array(meta["confusion"]), names), "plots/confusion_matrix.png")

    clips = sample_clips(cfg, datasets.val)
    model = models[cfg.model.arch]
    model.load_state_dict(torch.load(checkpoint_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    if cfg.model.arch == "tin":
        trace = interlace_trace(model, normalize(torch.from_numpy(clips)))
        tracker.log_figure(plot_offsets(trace, start=cfg.model.offset_init), "plots/offsets_per_layer.png")
        tracker.log_figure(plot_weights(trace), "plots/weights_per_frame.png")
    config = model_config(cfg.model, num_classes, cfg.data.frame_size, cfg.data.short_side, names,
                          datasets.train.multi_label)  # fmt: skip
    return log_and_register_model(
        tracker, checkpoint_dir / MODEL_FILE, config, cfg.tracking.register_as, meta["metrics"]["val_map"], clips[:2]
    )


def register_checkpoint(cfg: JobConfig, tracker: Tracker, datasets: Datasets, checkpoint: ray.train.Checkpoint):
    """Log artifacts and the model of `checkpoint` to the run and register it. Returns (meta, version, champion,
    message)."""
    with checkpoint.as_directory() as directory:
        meta = json.loads((Path(directory) / META_FILE).read_text())
        with tempfile.TemporaryDirectory() as keep:  # the checkpoint dir may be a temporary download
            local = Path(keep)
            (local / MODEL_FILE).write_bytes((Path(directory) / MODEL_FILE).read_bytes())
            version, champion, message = log_results(cfg, tracker, datasets, local, meta)
    tracker.set_tag("registered_version", f"{cfg.tracking.register_as}/{version}")
    logger.info(message)
    return meta, version, champion, message


def raise_on_bad_videos(metrics: dict, cfg: JobConfig, root: str) -> None:
    if metrics.get("stopped_bad_videos"):
        raise TooManyBadVideos(
            f"stopped at epoch {int(metrics['epoch']) + 1}: {metrics['bad_videos']} videos could not be decoded "
            f"({metrics['bad_video_fraction']:.1%} > --max-bad-fraction {cfg.data.max_bad_fraction}); by reason "
            f"{metrics['bad_by_reason']}. Run `python -m pipeline check {root}` to list them."
        )


def storage_failure(error: BaseException) -> str | None:
    """The first line of a worker's or the controller's failure that is storage not answering (our readers'
    StorageUnavailable, or pyarrow's checkpoint I/O giving up on the connection), else None."""
    causes = [error, *getattr(error, "worker_failures", {}).values(), getattr(error, "controller_failure", None)]
    markers = ("StorageUnavailable", "NETWORK_CONNECTION")
    for cause in filter(None, causes):
        lines = [line.strip() for line in str(cause).splitlines() if any(m in line for m in markers)]
        if isinstance(cause, storage.StorageUnavailable) or lines:
            return (lines or [str(cause)])[-1]
    return None


@contextlib.contextmanager
def storage_errors_as_unavailable(data_root: str, checkpoint_storage: str):
    """Re-raise a failure caused by storage not answering as StorageUnavailable naming both stores."""
    try:
        yield
    except BaseException as error:
        reason = storage_failure(error)
        if reason:
            raise storage.StorageUnavailable(
                f"training stopped, nothing registered: storage did not answer (data {data_root}, checkpoints "
                f"{checkpoint_storage}): {reason}"
            ) from error
        raise


def _per_class_text(ap: dict[str, float], shown: int = 16) -> str:
    items = sorted(ap.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1.0))
    if len(items) > shown:  # the best and the worst few
        items = items[: shown // 2] + [("...", float("nan"))] + items[-shown // 2 :]
    return ", ".join(name if name == "..." else f"{name} {value:.2f}" for name, value in items)


def temporal_text(ap: dict[str, float]) -> str | None:
    """Mean AP of the time-reversed event classes beside the other classes, for data that has the synthetic events
    (the embedded default): the first shows what a temporal model adds, the second what any frame shows."""
    events = [name for pair in PAIRS for name in pair]
    if not set(events) <= set(ap):
        return None
    others = [v for name, v in ap.items() if name not in events and not np.isnan(v)]
    line = f"time-reversed events: mAP {np.nanmean([ap[e] for e in events]):.3f}"
    line += " (" + ", ".join(f"{f}/{b} {ap[f]:.2f}/{ap[b]:.2f}" for f, b in PAIRS) + ")"
    return line + (f"; appearance classes: mAP {np.mean(others):.3f}" if others else "")


def summary(outcome: TrainOutcome) -> str:
    m = outcome.metrics
    ui = outcome.tracking_uri if outcome.tracking_uri.startswith("http") else None
    lines = [
        f"best epoch {int(m['epoch']) + 1}: val_map {m['val_map']:.4f} (over videos), val_map_classes "
        f"{m['val_map_classes']:.4f}, train_loss {m['train_loss']:.4f}, {m['clips_per_s']:.1f} clips/s",
        "validation AP per class: " + _per_class_text(outcome.ap_per_class),
        outcome.message,
        f"MLflow run: {outcome.run_id} (experiment {outcome.experiment})",
        f"checkpoint: {outcome.checkpoint}",
        f"view it: open {redact(ui)}"
        if ui
        else f"view it: mlflow ui --backend-store-uri {outcome.tracking_uri} "
        "--port 5000, then open http://127.0.0.1:5000",
        f'load it: mlflow.pyfunc.load_model("models:/{outcome.model_name}/{outcome.version}") (or '
        f'"models:/{outcome.model_name}@champion"), or python jobs/predict.py --model '
        f"models:/{outcome.model_name}/{outcome.version} VIDEO...",
        *filter(None, [temporal_text(outcome.ap_per_class)]),  # last: what the embedded default is there to show
    ]
    return "\n".join(lines)
