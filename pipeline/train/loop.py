"""The per-worker training loop, a plain function of one config dict (Ray Train's `train_loop_per_worker`).

Each epoch: train on this worker's shard of the training set, evaluate exactly on the whole validation set
(each rank decodes a disjoint slice, predictions are gathered, every video counted once), log to MLflow from
rank 0, and report metrics and a checkpoint from every rank. A rerun or a restarted worker group resumes from the
last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

from pipeline.data.dataset import BadVideoCounter, ClipSpec, clip_dataset, torch_batches
from pipeline.data.layouts import DIRECTION_SENSITIVE
from pipeline.registry.tracking import registered_weights, tracking_uri
from pipeline.train.config import JobConfig
from pipeline.train.engine import make_engine
from pipeline.train.progress import quiet_ray_reports, step_line
from tin_core import ModelConfig, ap_per_class, classification_metrics

logger = logging.getLogger(__name__)

META_FILE = "meta.json"


def checkpoint_dir(epoch: int) -> str:
    """The name of an epoch's checkpoint directory in the run's storage."""
    return f"epoch-{epoch:04d}"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch a checkpoint directory's name holds; None for other names."""
    match = re.fullmatch(r"epoch-(\d+)", name)
    return int(match.group(1)) if match else None


def clip_spec(cfg: JobConfig) -> ClipSpec:
    d = cfg.data
    flip = d.flip and d.format not in DIRECTION_SENSITIVE  # a flip would swap left and right classes
    return ClipSpec(cfg.model.num_segments, d.short_side, d.frame_size, flip, tuple(d.crop_scales))


def resolved_model(cfg: JobConfig) -> ModelConfig:
    """The model section with a models:/ --init-from downloaded to a local weights file."""
    if not cfg.model.init_from.startswith("models:/"):
        return cfg.model
    weights = registered_weights(cfg.model.init_from, tracking_uri(cfg.tracking.mlflow_uri))
    return dataclasses.replace(cfg.model, init_from=weights)


def lr_factor(cfg: JobConfig, epoch: float) -> float:
    """Linear warmup from warmup_start, then cosine decay to 0 (or /10 at each of lr_steps), as a multiple of the
    base lr."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return o.warmup_start + (1 - o.warmup_start) * (epoch + 1e-3) / o.warmup_epochs
    if o.lr_schedule == "step":
        return 0.1 ** sum(epoch >= step for step in o.lr_steps)
    progress = (epoch - o.warmup_epochs) / max(o.epochs - o.warmup_epochs, 1e-8)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def per_clip_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() == 2:  # multi-hot: one binary task per class
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)
    return F.cross_entropy(logits, labels, reduction="none")


def all_gather(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def with_last(items):
    """(item, is_last) for each item: the last batch of an epoch ends a gradient accumulation early."""
    iterator = iter(items)
    previous = next(iterator, _END)
    for item in iterator:
        yield previous, False
        previous = item
    if previous is not _END:
        yield previous, True


_END = object()


def epoch_seed(*keys: int) -> int:
    """A 32-bit seed drawn from `keys` (numpy's SeedSequence: nearby keys give unrelated seeds)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def train_one_epoch(
    engine, shard, cfg: JobConfig, epoch: int, steps_per_epoch: int, device, log_every: int = 0
) -> dict:
    """One pass over this worker's shard. Bad clips stay in the batch with zero loss weight, so every rank takes the
    same number of steps (DDP and ZeRO synchronise on each). Every `log_every` steps a progress line is printed."""
    engine.module.train()
    counter = BadVideoCounter()
    loss_sum, clips, steps, waited = 0.0, 0, 0, 0.0
    start = last = time.perf_counter()
    batch_size = cfg.optim.batch_size
    # The epoch's random draws (the shuffle buffer; torch's, for dropout) follow the seed, the epoch and the rank
    # alone, so a run resumed at this epoch draws what the uninterrupted run did.
    torch.manual_seed(epoch_seed(cfg.optim.seed, epoch, dist.get_rank() if dist.is_initialized() else 0))
    batches = torch_batches(shard, batch_size, device, counter, 4 * batch_size, epoch_seed(cfg.optim.seed, epoch))
    for (batch, labels, _, good), final in with_last(batches):
        waited += time.perf_counter() - last
        engine.set_lr(lr_factor(cfg, epoch + min(steps / steps_per_epoch, 1.0)))
        weights = good.float()
        loss = (per_clip_loss(engine.forward(batch, final), labels) * weights).sum() / weights.sum().clamp(min=1.0)
        engine.step(loss)
        loss_sum += loss.item() * int(good.sum())
        clips += int(good.sum())
        steps += 1
        last = time.perf_counter()
        if log_every and steps % log_every == 0:
            rate = clips / (last - start)
            logger.info(step_line(epoch, steps, steps_per_epoch, loss_sum / max(clips, 1), rate))
    return {"loss_sum": loss_sum, "clips": clips, "waited": waited, "elapsed": time.perf_counter() - start,
            "seen": counter.seen, "bad": dict(counter.bad)}  # fmt: skip


# Decoded validation clips are deterministic (segment centres, centre crop): below this size per worker they are
# decoded once and kept in Ray's object store instead of being decoded again every epoch.
VAL_CACHE_BYTES = 512 * 2**20


def validation_dataset(val_rows: list[dict], cfg: JobConfig, data: dict, rank: int, world: int):
    """This rank's disjoint slice of the validation set (rows rank, rank + world, ...), or None if it is empty."""
    mine = val_rows[rank::world]
    if not mine:
        return None
    ds = clip_dataset(mine, clip_spec(cfg), data["num_classes"], data["multi_label"], train=False,
                      decoders=1, cpus_per_decoder=data["cpus_per_decoder"], batch_size=8)  # fmt: skip
    clip_bytes = cfg.model.num_segments * cfg.data.frame_size**2 * 3
    return ds.materialize() if len(mine) * clip_bytes <= VAL_CACHE_BYTES else ds


@torch.no_grad()
def evaluate(engine, val_ds, num_val: int, cfg: JobConfig, num_classes: int, device) -> dict:
    """Scores for every validation video. Each rank scores its slice; the gathered predictions are checked to hold
    each of the `num_val` videos exactly once (bad ones counted, not scored)."""
    engine.module.eval()
    indices, scores, targets = [], [], []
    counter = BadVideoCounter()
    if val_ds is not None:
        for batch, labels, index, good in torch_batches(val_ds, cfg.optim.batch_size, device, counter):
            if not bool(good.any()):
                continue
            scores.append(engine.infer(batch[good]).cpu().numpy())
            targets.append(labels[good].cpu().numpy())
            indices.append(index[good].cpu().numpy())
    local = (
        np.concatenate(indices) if indices else np.zeros(0, np.int64),
        np.concatenate(scores) if scores else np.zeros((0, num_classes), np.float32),
        np.concatenate(targets) if targets else None,
        counter.seen,
        dict(counter.bad),
    )
    gathered = all_gather(local)
    all_indices = np.concatenate([g[0] for g in gathered])
    seen = sum(g[3] for g in gathered)
    bad = sum((Counter(g[4]) for g in gathered), Counter())
    if len(np.unique(all_indices)) != len(all_indices) or seen != num_val:
        raise RuntimeError(f"validation covered {seen} of {num_val} videos ({len(all_indices)} scored, "
                           f"{len(np.unique(all_indices))} unique): sharding lost or repeated videos")  # fmt: skip
    all_scores = np.concatenate([g[1] for g in gathered])
    all_targets = np.concatenate([g[2] for g in gathered if g[2] is not None])
    metrics = {f"val_{k}": v for k, v in classification_metrics(all_scores, all_targets).items()}
    metrics["val_videos"] = len(all_indices)
    per_class = ap_per_class(all_scores, all_targets)
    val = {"metrics": metrics, "ap_per_class": per_class, "seen": seen, "bad": dict(bad)}
    if all_targets.ndim == 1:  # single-label: the counts behind the run's confusion-matrix figure
        val["confusion"] = confusion_matrix(all_targets, all_scores.argmax(axis=1), labels=range(num_classes))
    return val


def _restore(engine, checkpoint) -> int:
    """Load the checkpoint into the engine; returns the next epoch."""
    with checkpoint.as_directory() as directory:
        engine.load(Path(directory))
        return json.loads((Path(directory) / META_FILE).read_text())["epoch"] + 1


def train_loop_per_worker(config: dict) -> None:
    cfg: JobConfig = config["job"]
    data = config["data"]
    ray.data.DataContext.get_current().enable_progress_bars = False  # worker logs stay readable
    quiet_ray_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.dist.threads_per_worker > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.dist.threads_per_worker)
    torch.manual_seed(cfg.optim.seed)  # the same initial weights on every rank
    model = resolved_model(cfg).build(data["num_classes"])
    engine = make_engine(model, cfg, device, fc_lr5=bool(cfg.model.pretrained))
    tracker = config.get("tracker") if rank == 0 else None

    checkpoint = ray.train.get_checkpoint()
    start_epoch = _restore(engine, checkpoint) if checkpoint else 0
    shard = ray.train.get_dataset_shard("train")
    val_ds = validation_dataset(data["val_rows"], cfg, data, rank, world)
    for epoch in range(start_epoch, cfg.optim.epochs):
        started = time.perf_counter()
        log_every = cfg.tracking.log_every_steps if rank == 0 else 0
        train = all_gather(train_one_epoch(engine, shard, cfg, epoch, data["steps_per_epoch"], device, log_every))
        trained = time.perf_counter()
        val = evaluate(engine, val_ds, len(data["val_rows"]), cfg, data["num_classes"], device)
        validated = time.perf_counter()
        clips = sum(t["clips"] for t in train)
        seen = sum(t["seen"] for t in train) + val["seen"]
        bad = sum((Counter(t["bad"]) for t in train), Counter(val["bad"]))
        metrics = {
            "epoch": epoch,
            "train_loss": sum(t["loss_sum"] for t in train) / max(clips, 1),
            **val["metrics"],
            "clips_per_s": clips / max(max(t["elapsed"] for t in train), 1e-9),
            "data_wait_fraction": float(np.mean([t["waited"] / max(t["elapsed"], 1e-9) for t in train])),
            "lr": cfg.optim.lr * lr_factor(cfg, epoch + 1 - 1e-9),
            "bad_videos": sum(bad.values()),
            "bad_video_fraction": sum(bad.values()) / max(seen, 1),
            "resumed_from_epoch": start_epoch - 1,  # -1: this worker group started from scratch
            "train_seconds": trained - started,
            "val_seconds": validated - trained,
        }
        too_many_bad = metrics["bad_video_fraction"] > cfg.data.max_bad_fraction
        if tracker is not None:
            tracker.log_epoch(metrics, epoch)
            if bad:
                tracker.log_text(f"skipped videos by reason: {dict(bad)}", f"bad_videos/epoch_{epoch}.txt")
        with tempfile.TemporaryDirectory() as directory:
            engine.save(Path(directory))
            if rank == 0:
                meta = {"epoch": epoch, "metrics": metrics, "ap_per_class": val["ap_per_class"],
                        "config": cfg.to_dict(), "bad_by_reason": dict(bad)}  # fmt: skip
                if "confusion" in val:
                    meta["confusion"] = val["confusion"].tolist()
                (Path(directory) / META_FILE).write_text(json.dumps(meta, default=str))
            report = {**metrics, "bad_by_reason": json.dumps(dict(bad)), "stopped_bad_videos": too_many_bad}
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=checkpoint_dir(epoch))  # fmt: skip
        if too_many_bad:  # every rank sees the same gathered counts, so all stop together; the driver raises
            return
