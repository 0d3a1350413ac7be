"""The training job's driver: check inputs, start Ray Train, then log and register the best model in MLflow.

    outcome = run_training(TrainConfig(...))

Everything that can be checked without Ray (flags, the dataset's annotations, pretrained weights) is checked first,
so a bad --data root or flag fails in seconds with an error naming what is wrong.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
import yaml
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline import storage
from pipeline.annotations import Manifest, read_mmit
from pipeline.config import DEFAULT_CACHE, TrainConfig
from pipeline.data import ClipDecoder, TooManyBadVideos, clip_dataset, manifest_rows
from pipeline.parallel import MODEL_FILE
from pipeline.plots import plot_offsets, plot_weights
from pipeline.serving import model_config
from pipeline.synthetic import SyntheticSpec, generate_mmit
from pipeline.tracking import Tracker, finish_run, log_and_register_model, redact, start_run, tracking_uri
from pipeline.train_loop import META_FILE, clip_spec, model_from_config, train_loop_per_worker
from tin_core import complexity_report, interlace_trace
from tin_core.model import build_model

logger = logging.getLogger(__name__)


@dataclass
class Datasets:
    root: str
    train: Manifest
    val: Manifest


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


def default_data_root(cfg: TrainConfig) -> str:
    """The generated dataset, written once into the cache and reused."""
    spec = SyntheticSpec(num_train=cfg.num_train, num_val=cfg.num_val, seed=cfg.seed)
    root = DEFAULT_CACHE / f"synthetic-mmit-s{spec.seed}-{spec.num_train}-{spec.num_val}"
    return str(generate_mmit(root, spec))


def load_datasets(cfg: TrainConfig) -> Datasets:
    root = cfg.data or default_data_root(cfg)
    if not storage.exists(root):
        raise ValueError(f"--data {root}: no such directory or bucket prefix")
    train, val = read_mmit(root, "training"), read_mmit(root, "validation")
    for name, manifest in (("trainingSet.csv", train), ("validationSet.csv", val)):
        if not manifest.records:
            raise ValueError(f"--data {root}: {name} lists no videos")
    return Datasets(root, train, val)


def preflight(cfg: TrainConfig) -> Datasets:
    """All checks that need no Ray: flag values, annotations, pretrained weights."""
    cfg.validate()
    datasets = load_datasets(cfg)
    if cfg.pretrained and not storage.exists(cfg.pretrained):
        raise ValueError(f"--pretrained {cfg.pretrained}: no such file")
    # Build the model once here: a bad combination (e.g. groups that do not divide the channels) fails now.
    model_from_config(TrainConfig(**{**cfg.to_dict(), "pretrained": ""}), datasets.train.num_classes)
    return datasets


def worker_env() -> dict[str, str]:
    """Environment of the training workers: DeepSpeed's accelerator and a project-local build cache for its ops."""
    env = {"TORCH_EXTENSIONS_DIR": str(DEFAULT_CACHE / "torch_extensions")}
    for key in ("DS_ACCELERATOR", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "TIN_STORAGE_RETRY_SECONDS"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def trial_cpus(cfg: TrainConfig) -> float:
    """CPUs one training run wants: its workers' reservations and one CPU per decoder."""
    return (0 if cfg.use_gpu else cfg.num_workers * cfg.cpus_per_worker) + cfg.decoders


def build_trainer(
    cfg: TrainConfig,
    datasets: Datasets,
    tracker: Tracker | None,
    run_name: str,
    callbacks: list | None = None,
    cpu_budget: float | None = None,
) -> TorchTrainer:
    """A TorchTrainer for `cfg`. Decoders share the CPUs of `cpu_budget` (default: the cluster's) that the workers
    leave free."""
    total_cpus = cpu_budget or ray.cluster_resources().get("CPU", 1.0)
    free_cpus = total_cpus - (0 if cfg.use_gpu else cfg.num_workers * cfg.cpus_per_worker)
    if free_cpus <= 0:
        raise ValueError(f"--num-workers {cfg.num_workers} x --cpus-per-worker {cfg.cpus_per_worker} leave no CPU of "
                         f"{total_cpus:g} for decoding videos")  # fmt: skip
    # Never more than what is free (Ray would wait for it forever), at most a whole CPU per decoding task.
    cpus_per_decoder = min(1.0, free_cpus / cfg.decoders)
    train_rows = manifest_rows(datasets.train)
    spec = clip_spec(cfg)
    train_ds = clip_dataset(
        train_rows, spec, datasets.train.num_classes, datasets.train.multi_label, train=True,
        decoders=cfg.decoders, cpus_per_decoder=cpus_per_decoder, seed=cfg.seed,
    )  # fmt: skip
    data = {
        "val_rows": manifest_rows(datasets.val),
        "num_classes": datasets.train.num_classes,
        "multi_label": datasets.train.multi_label,
        "steps_per_epoch": max(1, math.ceil(len(train_rows) / (cfg.num_workers * cfg.batch_size))),
        "cpus_per_decoder": cpus_per_decoder,
    }
    storage_fs, storage_path = storage.pyarrow_filesystem(cfg.storage)
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "data": data, "tracker": tracker},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets={"train": train_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),  # validation is sharded exactly by the loop
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_map", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": worker_env()},
            callbacks=callbacks,
        ),
    )


def best_checkpoint(result) -> tuple[ray.train.Checkpoint, dict]:
    candidates = [(c, m) for c, m in result.best_checkpoints if m.get("val_map") is not None]
    if not candidates:
        raise RuntimeError("training reported no checkpoint with a validation mAP")
    return max(candidates, key=lambda cm: (cm[1]["val_map"], cm[1]["epoch"]))


def sample_clips(cfg: TrainConfig, manifest: Manifest, count: int = 8) -> np.ndarray:
    """A few decoded validation clips (uint8 [N, T, H, W, 3]) for plots and the model's input example."""
    decoder = ClipDecoder(clip_spec(cfg), manifest.num_classes, manifest.multi_label, train=False)
    clips = [decoder.decode(r.uri) for r in manifest.records[: count * 2]]
    good = [clip for clip, status in clips if status == 0][:count]
    if not good:
        raise RuntimeError("no validation clip decodes: cannot log the model")
    return np.stack(good)


def log_results(cfg: TrainConfig, tracker: Tracker, datasets: Datasets, checkpoint_dir: Path, meta: dict) -> tuple:
    """Artifacts (config, complexity, per-class AP, Figure-5 plots) and the registered model."""
    from pipeline.transforms import normalize

    num_classes = datasets.train.num_classes
    tracker.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
    models = {cfg.arch: model_from_config(TrainConfig(**{**cfg.to_dict(), "pretrained": ""}), num_classes)}
    if cfg.arch != "tsn":
        models["tsn (same backbone)"] = build_model("tsn", num_classes, cfg.num_segments, cfg.backbone)
    shape = (1, cfg.num_segments, 3, cfg.frame_size, cfg.frame_size)
    tracker.log_text(complexity_report(models, shape) + "\n", "complexity.txt")
    names = datasets.train.class_names
    tracker.log_dict({names[k]: ap for k, ap in enumerate(meta["ap_per_class"])}, "val_ap_per_class.json")

    clips = sample_clips(cfg, datasets.val)
    model = models[cfg.arch]
    model.load_state_dict(torch.load(checkpoint_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    if cfg.arch == "tin":
        trace = interlace_trace(model, normalize(torch.from_numpy(clips)))
        tracker.log_figure(plot_offsets(trace), "plots/offsets_per_layer.png")
        tracker.log_figure(plot_weights(trace), "plots/weights_per_frame.png")
    config = model_config(cfg, num_classes, names, datasets.train.multi_label)
    return log_and_register_model(
        tracker, checkpoint_dir / MODEL_FILE, config, cfg.register_as, meta["metrics"]["val_map"], clips[:2]
    )


def connect_ray() -> None:
    if not ray.is_initialized():
        ray.init()  # joins the cluster of `ray job submit` (RAY_ADDRESS), else starts a local one
    # Pin the address for Ray's own helper processes: "auto" would be ambiguous beside another cluster on the host.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    ray.data.DataContext.get_current().enable_progress_bars = False


def raise_on_bad_videos(metrics: dict, cfg: TrainConfig, root: str) -> None:
    if metrics.get("stopped_bad_videos"):
        raise TooManyBadVideos(
            f"stopped at epoch {metrics['epoch']}: {metrics['bad_videos']} videos could not be decoded "
            f"({metrics['bad_video_fraction']:.1%} > --max-bad-fraction {cfg.max_bad_fraction}); by reason "
            f"{metrics['bad_by_reason']}. Run `python -m pipeline check {root}` to list them."
        )


def register_checkpoint(cfg: TrainConfig, tracker: Tracker, datasets: Datasets, checkpoint: ray.train.Checkpoint):
    """Log artifacts and the model of `checkpoint` to the run and register it. Returns (meta, version, champion,
    message)."""
    with checkpoint.as_directory() as directory:
        meta = json.loads((Path(directory) / META_FILE).read_text())
        with tempfile.TemporaryDirectory() as keep:  # the checkpoint dir may be a temporary download
            local = Path(keep)
            (local / MODEL_FILE).write_bytes((Path(directory) / MODEL_FILE).read_bytes())
            version, champion, message = log_results(cfg, tracker, datasets, local, meta)
    tracker.set_tag("registered_version", f"{cfg.register_as}/{version}")
    logger.info(message)
    return meta, version, champion, message


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


def run_training(cfg: TrainConfig, datasets: Datasets | None = None) -> TrainOutcome:
    datasets = datasets or preflight(cfg)
    run_name = cfg.name or f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking_uri(cfg.mlflow_uri)
    connect_ray()
    tracker = start_run(uri, cfg.experiment, run_name, {**cfg.to_dict(), "data": datasets.root, "name": run_name})
    logger.info("MLflow run %s in %s", tracker.run_id, redact(uri))
    try:
        result = build_trainer(cfg, datasets, tracker, run_name).fit()
        if result.error:
            raise result.error
        raise_on_bad_videos(result.metrics, cfg, datasets.root)
        checkpoint, _ = best_checkpoint(result)
        meta, version, champion, message = register_checkpoint(cfg, tracker, datasets, checkpoint)
        finish_run(tracker)
    except BaseException as error:
        finish_run(tracker, "FAILED")
        reason = storage_failure(error)
        if reason:
            raise storage.StorageUnavailable(
                f"training stopped, nothing registered: storage did not answer (data {datasets.root}, checkpoints "
                f"{cfg.storage}): {reason}"
            ) from error
        raise
    names = datasets.train.class_names
    per_class = {names[k]: ap for k, ap in enumerate(meta["ap_per_class"])}
    return TrainOutcome(tracker.run_id, uri, cfg.experiment, meta["metrics"], result.metrics, per_class,
                        checkpoint.path, cfg.register_as, version, champion, message)  # fmt: skip


def _per_class_text(ap: dict[str, float], shown: int = 16) -> str:
    items = sorted(ap.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1.0))
    if len(items) > shown:  # the best and the worst few
        items = items[: shown // 2] + [("...", float("nan"))] + items[-shown // 2 :]
    return ", ".join(name if name == "..." else f"{name} {value:.2f}" for name, value in items)


def summary(outcome: TrainOutcome) -> str:
    m = outcome.metrics
    ui = outcome.tracking_uri if outcome.tracking_uri.startswith("http") else None
    lines = [
        f"best epoch {m['epoch']}: val_map {m['val_map']:.4f} (over videos), val_map_classes "
        f"{m['val_map_classes']:.4f}, train_loss {m['train_loss']:.4f}, {m['clips_per_s']:.1f} clips/s",
        "validation AP per class: " + _per_class_text(outcome.ap_per_class),
        outcome.message,
        f"MLflow run: {outcome.run_id} (experiment {outcome.experiment})",
        f"checkpoint: {outcome.checkpoint}",
        f"view it: open {redact(ui)}" if ui else f"view it: mlflow ui --backend-store-uri {outcome.tracking_uri} "
        "--port 5000, then open http://127.0.0.1:5000",
        f'load it: mlflow.pyfunc.load_model("models:/{outcome.model_name}/{outcome.version}") (or '
        f'"models:/{outcome.model_name}@champion"), or python jobs/predict.py --model '
        f"models:/{outcome.model_name}/{outcome.version} VIDEO...",
    ]
    return "\n".join(lines)
