"""The training job's driver: check inputs, start Ray Train, then register the best model in MLflow.

    outcome = run_training(JobConfig(...))

Everything that can be checked without Ray (flags, the dataset's annotations, pretrained weights) is checked first,
so a bad --data root or flag fails in seconds with an error naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import pyarrow.fs
import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline.data import storage
from pipeline.data.annotations import Manifest
from pipeline.data.dataset import clip_dataset, continue_at_epoch, manifest_rows
from pipeline.data.layouts import read_dataset
from pipeline.data.storage import DEFAULT_CACHE
from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.registry.tracking import Tracker, finishing, redact, start_run, tracking_uri
from pipeline.train.config import JobConfig, flat_values
from pipeline.train.loop import checkpoint_epoch, clip_spec, resolved_model, train_loop_per_worker
from pipeline.train.progress import EpochProgress
from pipeline.train.results import (
    TrainOutcome,
    best_checkpoint,
    raise_on_bad_videos,
    register_checkpoint,
    storage_errors_as_unavailable,
)

logger = logging.getLogger(__name__)


@dataclass
class Datasets:
    root: str
    train: Manifest
    val: Manifest


def default_data_root(cfg: JobConfig) -> str:
    """The generated dataset, written once into the cache and reused."""
    spec = SyntheticSpec(num_train=cfg.data.num_train, num_val=cfg.data.num_val, seed=cfg.optim.seed)
    root = DEFAULT_CACHE / f"synthetic-mmit-v2-s{spec.seed}-{spec.num_train}-{spec.num_val}"
    return str(generate_mmit(root, spec))


def load_datasets(cfg: JobConfig) -> Datasets:
    root = cfg.data.root or default_data_root(cfg)
    if not storage.exists(root):
        raise ValueError(f"--data {root}: no such directory or bucket prefix")
    train = read_dataset(root, cfg.data.format, "training")
    val = read_dataset(root, cfg.data.format, "validation", train.class_names)
    for split, manifest in (("training", train), ("validation", val)):
        if not manifest.records:
            raise ValueError(f"--data {root}: the {cfg.data.format} {split} split lists no videos")
    return Datasets(root, train, val)


def preflight(cfg: JobConfig) -> Datasets:
    """All checks that need no Ray: flag values, annotations, pretrained weights."""
    cfg.validate()
    datasets = load_datasets(cfg)
    if cfg.model.pretrained and not storage.exists(cfg.model.pretrained):
        raise ValueError(f"--pretrained {cfg.model.pretrained}: no such file")
    init = cfg.model.init_from
    if init and not init.startswith("models:/") and not storage.exists(init):
        raise ValueError(f"--init-from {init}: no such file")
    # Build the model once here: a bad combination (e.g. groups that do not divide the channels) or a checkpoint
    # that does not fit fails now.
    dataclasses.replace(resolved_model(cfg), pretrained="").build(datasets.train.num_classes)
    return datasets


def worker_env() -> dict[str, str]:
    """Environment of the training workers: DeepSpeed's accelerator and a project-local build cache for its ops."""
    env = {"TORCH_EXTENSIONS_DIR": str(DEFAULT_CACHE / "torch_extensions")}
    keys = ("DS_ACCELERATOR", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_RETRY_MODE",
            "AWS_MAX_ATTEMPTS", "TIN_STORAGE_RETRY_SECONDS")  # fmt: skip
    for key in keys:
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def worker_cpus(cfg: JobConfig) -> float:
    """CPUs the training workers reserve (none beyond Ray's default on GPU workers)."""
    return 0 if cfg.dist.use_gpu else cfg.dist.num_workers * cfg.dist.cpus_per_worker


def trial_cpus(cfg: JobConfig) -> float:
    """CPUs one training run uses with all its decoders running."""
    return worker_cpus(cfg) + cfg.data.decoders * cfg.data.cpus_per_decoder


def warn_if_waiting(cfg: JobConfig, resources: dict) -> bool:
    """Log what the run waits for when the cluster cannot place its workers and one decoder now (an autoscaler adds
    the nodes: KubeRay's 0-CPU head, a GPU group at zero replicas); True if it waits."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    d, w = cfg.data, cfg.dist
    least = w.num_workers * w.cpus_per_worker + d.cpus_per_decoder
    short = []
    if cpus < least:
        short.append(f"{least:g} CPUs ({w.num_workers} training workers x {w.cpus_per_worker:g} and one decoder x "
                     f"{d.cpus_per_decoder:g}), the cluster has {cpus:g}")  # fmt: skip
    if cfg.dist.use_gpu and gpus < cfg.dist.num_workers:
        short.append(f"{cfg.dist.num_workers} GPUs, the cluster has {gpus:g}")
    if short:
        logger.warning("waiting for nodes: the run needs %s now; decoding grows to --decoders %d as CPUs join",
                       "; ".join(short), cfg.data.decoders)  # fmt: skip
    return bool(short)


def ingest_options(cfg: JobConfig) -> ray.data.ExecutionOptions:
    """Ray Train's default ingest options, keeping the training clips' seeded order if --preserve-order."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = cfg.data.preserve_order
    return options


# Ray Train's record of the checkpoints it registered, in the run's directory (written as it registers one).
RAY_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def next_epoch(storage_fs: pyarrow.fs.FileSystem | None, run_dir: str) -> int:
    """The epoch a run starts at: one past the checkpoint Ray Train restores, the newest it registered, 0 for a new
    run. Its snapshot says which: a checkpoint directory is written a moment before it is registered, so the newest
    directory may not be the one restored."""
    fs = storage_fs or pyarrow.fs.LocalFileSystem()
    path = f"{run_dir}/{RAY_CHECKPOINT_SNAPSHOT}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return 0
    with fs.open_input_stream(path) as f:
        latest = json.loads(f.read()).get("latest_checkpoint_result") or {}
    epoch = checkpoint_epoch(latest.get("checkpoint_dir_name", ""))
    return 0 if epoch is None else epoch + 1


@dataclass
class ResumedTrainingData:
    """The training dataset as Ray Train asks for it at each worker group's start (the first and every restart): its
    seeded draws continue at the epoch the group resumes at, so a resumed run trains on the clips, frames and crops
    the uninterrupted run would have."""

    dataset: ray.data.Dataset
    storage_fs: pyarrow.fs.FileSystem | None
    run_dir: str

    def __call__(self) -> ray.data.Dataset:
        return continue_at_epoch(self.dataset, next_epoch(self.storage_fs, self.run_dir))


def build_trainer(
    cfg: JobConfig,
    datasets: Datasets,
    tracker: Tracker | None,
    run_name: str,
    callbacks: list | None = None,
) -> TorchTrainer:
    """A TorchTrainer for `cfg`: up to --decoders decode tasks of --cpus-per-decoder CPUs each, run as CPUs allow."""
    cpus_per_decoder = cfg.data.cpus_per_decoder
    train_rows = manifest_rows(datasets.train)
    train_ds = clip_dataset(
        train_rows, clip_spec(cfg), datasets.train.num_classes, datasets.train.multi_label, train=True,
        decoders=cfg.data.decoders, cpus_per_decoder=cpus_per_decoder, seed=cfg.optim.seed,
    )  # fmt: skip
    data = {
        "val_rows": manifest_rows(datasets.val),
        "num_classes": datasets.train.num_classes,
        "multi_label": datasets.train.multi_label,
        "steps_per_epoch": max(1, math.ceil(len(train_rows) / (cfg.dist.num_workers * cfg.optim.batch_size))),
        "cpus_per_decoder": cpus_per_decoder,
    }
    storage_fs, storage_path = storage.pyarrow_filesystem(cfg.tracking.storage)
    dist = cfg.dist
    resources = {"CPU": dist.cpus_per_worker} | ({"GPU": 1} if dist.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg, "data": data, "tracker": tracker},
        scaling_config=ScalingConfig(
            num_workers=dist.num_workers, use_gpu=dist.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if dist.use_gpu else "gloo"),
        datasets={"train": ResumedTrainingData(train_ds, storage_fs, f"{storage_path}/{run_name}")},
        # validation is sharded exactly by the loop
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest_options(cfg)),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_map", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=dist.max_failures),
            worker_runtime_env={"env_vars": worker_env()},
            callbacks=callbacks,
        ),
    )


def connect_ray() -> None:
    if not ray.is_initialized():
        ray.init()  # joins the cluster of `ray job submit` (RAY_ADDRESS), else starts a local one
    # Pin the address for Ray's own helper processes: "auto" would be ambiguous beside another cluster on the host.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    ray.data.DataContext.get_current().enable_progress_bars = False


def run_training(cfg: JobConfig, datasets: Datasets | None = None) -> TrainOutcome:
    datasets = datasets or preflight(cfg)
    run_name = cfg.tracking.name or f"{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking_uri(cfg.tracking.mlflow_uri)
    connect_ray()
    warn_if_waiting(cfg, ray.cluster_resources())
    params = {**flat_values(cfg), "data": datasets.root, "name": run_name}
    tracker = start_run(uri, cfg.tracking.experiment, run_name, params)
    logger.info("MLflow run %s in %s", tracker.run_id, redact(uri))
    with storage_errors_as_unavailable(datasets.root, cfg.tracking.storage), finishing(tracker):
        result = build_trainer(cfg, datasets, tracker, run_name, [EpochProgress(cfg.optim.epochs)]).fit()
        if result.error:
            raise result.error
        raise_on_bad_videos(result.metrics, cfg, datasets.root)
        checkpoint, _ = best_checkpoint(result)
        meta, version, champion, message = register_checkpoint(cfg, tracker, datasets, checkpoint)
    names = datasets.train.class_names
    per_class = {names[k]: ap for k, ap in enumerate(meta["ap_per_class"])}
    return TrainOutcome(tracker.run_id, uri, cfg.tracking.experiment, meta["metrics"], result.metrics, per_class,
                        checkpoint.path, cfg.tracking.register_as, version, champion, message)  # fmt: skip
