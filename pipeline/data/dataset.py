"""Ray Data: manifest rows -> decoded, sampled, transformed uint8 clips, streamed to training workers.

    rows (index, uri, labels) --shuffled, block order drawn each epoch (train)--> map_batches(decode_batch, task pool)
        --> {clip: uint8 [T, H, W, 3], labels: float32 multi-hot [K] | int64, index: int64, status: int8}

Only the sampled frames are decoded (pipeline.data.video), straight from the storage the URI names. The dataset re-runs
every epoch, so training clips get new random frames, crops and order each epoch, all drawn from the job's seed and
the epoch (Ray Data's execution index; `continue_at_epoch` sets it for a resumed run): a run with one training worker
repeats exactly. A clip that cannot be decoded becomes a row with a non-zero `status` (its reason code) and a zero
clip: it is logged with its path by the decoder, dropped and counted by reason by the consumer (`BadVideoCounter`),
never a crash.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray
import torch

from pipeline.data import storage
from pipeline.data.annotations import Manifest
from pipeline.data.sampling import segment_indices
from pipeline.data.transforms import MULTI_SCALES, ClipTransform, normalize
from pipeline.data.video import DecodeError, decode_clip

logger = logging.getLogger(__name__)

# Reason codes of the `status` column; 0 is a decoded clip. Unknown reasons map to "other".
REASONS = ("ok", "unreadable", "no_video_stream", "no_frames", "corrupt", "unstable_frame_count", "other")


def reason_code(reason: str) -> int:
    return REASONS.index(reason) if reason in REASONS else REASONS.index("other")


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from videos."""

    num_segments: int = 8  # frames per clip, one per TSN segment
    short_side: int = 128  # frames are resized at decode so their short side is this
    crop_size: int = 112  # output side: multi-scale crop (train) or centre crop (eval)
    flip: bool = False  # random horizontal flip in training; never for direction-sensitive classes
    scales: tuple[float, ...] = MULTI_SCALES  # training crop sides, as fractions of the short side


def manifest_rows(manifest: Manifest) -> list[dict]:
    """Plain rows for Ray Data; `index` identifies a video across shards (exact evaluation)."""
    return [{"index": i, "uri": r.uri, "labels": list(r.labels)} for i, r in enumerate(manifest.records)]


def encode_labels(labels: list[int], num_classes: int, multi_label: bool) -> np.ndarray:
    if multi_label:
        target = np.zeros(num_classes, dtype=np.float32)
        target[list(labels)] = 1.0
        return target
    return np.int64(labels[0] if len(labels) else -1)


def decode_or_skip(uri: str, decode: Callable[[], np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """(decode(), 0), or (zeros of `shape`, reason code) for a video that cannot be decoded: logged with its path,
    never raised. Storage that does not answer is retried with backoff for storage.RETRY_SECONDS, then raises
    StorageUnavailable: an outage or lasting throttling stops the job rather than being counted as bad videos."""
    deadline = time.monotonic() + storage.RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            return _decode_once(uri, decode, shape)
        except Exception as e:
            if not storage.is_unavailable(e):
                raise
            if time.monotonic() + delay > deadline:
                raise storage.StorageUnavailable(
                    f"storage did not answer for {storage.RETRY_SECONDS:g} s reading {uri}: {e}"
                ) from e
            wait = random.uniform(delay / 2, delay)  # jitter: readers that failed together retry apart
            logger.warning("storage unavailable reading %s (%s); retrying in %.1f s", uri, e, wait)
            time.sleep(wait)
            delay = min(delay * 2, 8.0)


def _decode_once(uri: str, decode: Callable[[], np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    try:
        return decode(), 0
    except DecodeError as e:
        if e.__cause__ is not None and storage.is_unavailable(e.__cause__):
            # The store is away or busy; the video may well be fine. A new error: re-raising the cause would lose
            # its own context (the botocore answer that says why).
            raise ConnectionError(str(e.__cause__)) from e.__cause__
        logger.warning("skipping video %s: %s", uri, e.reason)
        return np.zeros(shape, dtype=np.uint8), reason_code(e.reason)
    except Exception as e:  # a decoder bug or odd file must not take the job down: skip and report it
        if storage.is_unavailable(e):
            raise
        logger.warning("skipping video %s: %s: %s", uri, type(e).__name__, e)
        return np.zeros(shape, dtype=np.uint8), reason_code("other")


class ClipDecoder:
    """map_batches callable: decode, sample and transform one batch of manifest rows."""

    def __init__(self, spec: ClipSpec, num_classes: int, multi_label: bool, train: bool, seed: int | None = None):
        self.spec = spec
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.mode = "train" if train else "val"
        self.transform = ClipTransform(spec.crop_size, train=train, flip=spec.flip, scales=spec.scales)
        self.seed = seed

    def row_rng(self, index: int) -> np.random.Generator:
        """The draws (frames, crop, flip) of video `index` in this execution of the dataset (one per epoch): a
        function of (seed, epoch, video) alone, whatever the order, batching or decoder; fresh entropy without a
        seed."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([index, ray.data.DataContext.get_current()._execution_idx, self.seed])

    def decode(self, uri: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """(clip, 0), or (zeros, reason code) for a video that cannot be decoded (see `decode_or_skip`)."""
        rng = rng if rng is not None else np.random.default_rng()

        def clip() -> np.ndarray:
            frames, _ = decode_clip(
                uri, lambda n: segment_indices(n, self.spec.num_segments, self.mode, rng), self.spec.short_side
            )
            return self.transform(frames, rng)

        return decode_or_skip(uri, clip, self.clip_shape)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return (self.spec.num_segments, self.spec.crop_size, self.spec.crop_size, 3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(uri) for uri in batch["uri"]]
        draws = [self.row_rng(int(index)) for index in batch["index"]]
        clips, status = zip(*[self.decode(uri, rng) for uri, rng in zip(uris, draws, strict=True)], strict=True)
        labels = [encode_labels(list(lab), self.num_classes, self.multi_label) for lab in batch["labels"]]
        return {
            "clip": np.stack(clips),
            "labels": np.stack(labels),
            "index": np.asarray(batch["index"], dtype=np.int64),
            "status": np.asarray(status, dtype=np.int8),
        }


def decode_batch(batch: dict[str, np.ndarray], **decoder_args) -> dict[str, np.ndarray]:
    """map_batches task: a stateless ClipDecoder call (tasks reuse Ray's pooled worker processes, so imports and
    storage clients stay warm across epochs, where a fresh actor pool per epoch would start cold)."""
    return ClipDecoder(**decoder_args)(batch)


def task_blocks(num_rows: int, rows_per_task: int) -> int:
    """Input blocks for rows decoded in order: one per decode task, at most 1000."""
    return max(1, min(math.ceil(num_rows / rows_per_task), 1000))


# Training rows are shuffled per epoch at block granularity: blocks of one row up to this many rows.
SHUFFLE_BLOCKS = 4096


def clip_dataset(
    rows: list[dict],
    spec: ClipSpec,
    num_classes: int,
    multi_label: bool,
    train: bool,
    decoders: int = 2,
    cpus_per_decoder: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
) -> ray.data.Dataset:
    """A Ray Dataset of decoded clips, decoded by up to `decoders` concurrent tasks of about `batch_size` videos each
    (large tasks: Ray Data notices a finished task only on its next scheduling round, ray-project/ray#45934, and
    the decoder idles meanwhile); small datasets get smaller tasks, so that every decoder has work.

    Training rows are drawn in a new order every epoch: they sit in blocks of one row (up to SHUFFLE_BLOCKS blocks;
    larger datasets get proportionally larger blocks) whose order is redrawn each epoch from `seed` and the epoch, and
    map_batches bundles them into decode tasks; consumers add a local shuffle buffer. Validation rows keep their
    order. Rows reach consumers in that order only where the execution preserves it (`preserve_order`).
    """
    if train:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]  # annotations may be sorted
    batch_size = max(1, min(batch_size, len(rows) // max(1, min(decoders, len(rows)))))
    if train:
        num_blocks = max(1, min(len(rows), SHUFFLE_BLOCKS))
    else:  # one block per task
        num_blocks = task_blocks(len(rows), batch_size)
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks)
    if train:
        ds = ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed, reseed_after_execution=True))
    return ds.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec, "num_classes": num_classes, "multi_label": multi_label, "train": train, "seed": seed},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=decoders),
        num_cpus=cpus_per_decoder,
    )


def continue_at_epoch(ds: ray.data.Dataset, epoch: int) -> ray.data.Dataset:
    """`ds` (changed in place) whose next run draws its order, frames and crops as its run number `epoch` would: the
    draws follow Ray Data's execution index, which a new or restarted consumer otherwise counts from 0."""
    ds.context._execution_idx = epoch
    return ds


class TooManyBadVideos(RuntimeError):
    """More videos failed to decode than --max-bad-fraction allows."""


class BadVideoCounter:
    """Counts the videos seen and the skipped ones by reason."""

    def __init__(self) -> None:
        self.seen = 0
        self.bad: Counter[str] = Counter()

    def update(self, status: torch.Tensor) -> torch.Tensor:
        """Record a batch's status column; returns the mask of good rows."""
        codes = status.cpu().numpy()
        self.seen += len(codes)
        for code in codes[codes != 0]:
            self.bad[REASONS[int(code)]] += 1
        return status == 0


def torch_batches(
    iterable,
    batch_size: int,
    device: torch.device | str = "cpu",
    counter: BadVideoCounter | None = None,
    shuffle_buffer: int | None = None,
    shuffle_seed: int | None = None,
):
    """(clips, labels, index, good) per batch of a Ray Data shard or dataset: clips normalised float
    [B, T, 3, H, W]; `good` masks the rows that decoded (bad rows are zero clips, counted by `counter`).

    Bad rows are masked rather than dropped so that every training rank takes the same number of steps.
    `iterable` is anything with iter_torch_batches (a DataIterator from ray.train.get_dataset_shard, or a Dataset).
    """
    batches = iterable.iter_torch_batches(
        batch_size=batch_size,
        device=device,
        drop_last=False,
        local_shuffle_buffer_size=shuffle_buffer,
        local_shuffle_seed=shuffle_seed,
        prefetch_batches=2,
    )
    for batch in batches:
        status = batch["status"]
        good = counter.update(status) if counter is not None else status == 0
        yield normalize(batch["clip"]), batch["labels"], batch["index"], good
