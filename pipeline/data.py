"""Ray Data: manifest rows -> decoded, sampled, transformed uint8 clips, streamed to training workers.

    rows (index, uri, labels) --shuffled, block order drawn each epoch (train)--> map_batches(decode_batch, task pool)
        --> {clip: uint8 [T, H, W, 3], labels: float32 multi-hot [K] | int64, index: int64, status: int8}

Only the sampled frames are decoded (pipeline.video), straight from the storage the URI names. The dataset re-runs
every epoch, so training clips get new random frames, crops and order each epoch. A clip that cannot be decoded
becomes a row with a non-zero `status` (its reason code) and a zero clip: it is logged with its path by the decoder,
dropped and counted by reason by the consumer (`BadVideoCounter`), never a crash.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from pipeline import storage
from pipeline.annotations import Manifest
from pipeline.sampling import segment_indices
from pipeline.transforms import ClipTransform, normalize
from pipeline.video import DecodeError, decode_clip

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


def manifest_rows(manifest: Manifest) -> list[dict]:
    """Plain rows for Ray Data; `index` identifies a video across shards (exact evaluation)."""
    return [{"index": i, "uri": r.uri, "labels": list(r.labels)} for i, r in enumerate(manifest.records)]


def encode_labels(labels: list[int], num_classes: int, multi_label: bool) -> np.ndarray:
    if multi_label:
        target = np.zeros(num_classes, dtype=np.float32)
        target[list(labels)] = 1.0
        return target
    return np.int64(labels[0] if len(labels) else -1)


class ClipDecoder:
    """map_batches callable: decode, sample and transform one batch of manifest rows.

    With `idle_helper` (Linux), an idle-priority thread decodes the batch's clips alongside the calling thread.
    decord and PyAV release the GIL while decoding, so the helper turns CPU time that nothing else wants into clips:
    the gaps Ray Data leaves between a decoder's tasks (ray-project/ray#45934), an execution's first second, in which
    Ray Data runs a single task (Ray 2.60's executor reads its CPU limit as zero until the first refresh, 1 s in, as
    the autoscaling coordinator answers asynchronously), and an epoch's tail, which that late start staggers. At idle
    priority it yields every CPU to the decoders' own threads, the trainers and other tasks; where a CPU quota would
    let it spend their time all the same, there is no helper (`idle_helper_fits`). Measured on 2 CPUs, one pass of
    256 clips: the CPUs idled 2.4-3.4 core-s without the helper and 0.1-0.2 with it. Its extra thread costs no
    measurable CPU per clip (a decoder beside a CPU kept busy, where the helper only gets slivers: median -0.2% over 8
    rounds; over whole passes +6.5% in one run and -2.4% in another, within this machine's noise); clips/s gained:
    median +2% and +15% in those runs (the second with 128-clip passes, where the start and tail weigh more). A
    normal-priority second thread measured the same as the idle one, but would take CPU from trainers.
    """

    def __init__(
        self, spec: ClipSpec, num_classes: int, multi_label: bool, train: bool, idle_helper: bool = True
    ) -> None:
        self.spec = spec
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.mode = "train" if train else "val"
        self.transform = ClipTransform(spec.crop_size, train=train, flip=spec.flip)
        self.rng = np.random.default_rng()  # fresh entropy per call: new samples every epoch
        self.idle_helper = idle_helper and idle_helper_fits()

    def decode(self, uri: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """(clip, 0), or (zeros, reason code) for a video that cannot be decoded. Storage that does not answer is
        retried with backoff for storage.RETRY_SECONDS, then raises StorageUnavailable: an outage stops the job
        rather than being counted as bad videos."""
        deadline = time.monotonic() + storage.RETRY_SECONDS
        delay = 0.5
        while True:
            try:
                return self._decode_once(uri, rng if rng is not None else self.rng)
            except Exception as e:
                if not storage.is_unavailable(e):
                    raise
                if time.monotonic() + delay > deadline:
                    raise storage.StorageUnavailable(
                        f"storage did not answer for {storage.RETRY_SECONDS:g} s reading {uri}: {e}"
                    ) from e
                logger.warning("storage unavailable reading %s (%s); retrying in %.1f s", uri, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def _decode_once(self, uri: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        try:
            frames, _ = decode_clip(
                uri, lambda n: segment_indices(n, self.spec.num_segments, self.mode, rng), self.spec.short_side
            )
            return self.transform(frames, rng), 0
        except DecodeError as e:
            if e.__cause__ is not None and storage.is_unavailable(e.__cause__):
                raise e.__cause__ from e  # the store is away; the video may well be fine
            logger.warning("skipping video %s: %s", uri, e.reason)
            return np.zeros(self.clip_shape, dtype=np.uint8), reason_code(e.reason)
        except Exception as e:  # a decoder bug or odd file must not take the job down: skip and report it
            if storage.is_unavailable(e):
                raise
            logger.warning("skipping video %s: %s: %s", uri, type(e).__name__, e)
            return np.zeros(self.clip_shape, dtype=np.uint8), reason_code("other")

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return (self.spec.num_segments, self.spec.crop_size, self.spec.crop_size, 3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(uri) for uri in batch["uri"]]
        rngs = self.rng.spawn(len(uris))  # one generator per clip: a generator is not safe to share across threads
        jobs = list(zip(uris, rngs, strict=True))
        decoded = map_with_idle_helper(self.decode, jobs) if self.idle_helper else [self.decode(*j) for j in jobs]
        clips, status = zip(*decoded, strict=True)
        labels = [encode_labels(list(lab), self.num_classes, self.multi_label) for lab in batch["labels"]]
        return {
            "clip": np.stack(clips),
            "labels": np.stack(labels),
            "index": np.asarray(batch["index"], dtype=np.int64),
            "status": np.asarray(status, dtype=np.int8),
        }


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs per period this process's cgroup may use (a CFS quota: a Kubernetes or Docker CPU limit), or None
    where it has none: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`, of the cgroup /proc/self/cgroup names, or of
    the hierarchy's root where that path is not mounted (a container that sees its own cgroup as the root)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers != "" and "cpu" not in controllers.split(","):
            continue
        hierarchy = root if controllers == "" else root / controllers  # "": the v2 unified hierarchy
        folder = hierarchy / path.lstrip("/")
        folder = folder if folder.is_dir() else hierarchy
        try:
            if controllers == "":
                quota, period = (folder / "cpu.max").read_text().split()
                if quota != "max":
                    return int(quota) / int(period)
            else:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                if quota > 0:
                    return quota / int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue  # no cpu controller in this hierarchy (a v2 line beside v1 controllers)
    return None


@functools.cache
def idle_helper_fits() -> bool:
    """Whether an idle-priority helper thread takes only CPU time nothing else of ours wants. SCHED_IDLE yields on a
    CPU's run queue, but a CPU quota is one budget for the whole cgroup: where the process may run on more CPUs than
    its quota (a pod with a CPU limit on a larger host), a helper on an otherwise idle CPU spends quota that the
    decoders and trainers in the same container then lack. There, and where SCHED_IDLE does not exist, no helper."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    quota, cpus = cpu_quota(), len(os.sched_getaffinity(0))
    if quota is not None and quota < cpus:
        logger.info("CPU quota of %.2f CPUs on %d CPUs: decoding without the idle-priority helper", quota, cpus)
        return False
    return True


def map_with_idle_helper(fn, jobs: list[tuple]) -> list:
    """[fn(*job) for job in jobs], computed by the calling thread and one helper thread at idle priority (SCHED_IDLE:
    it runs only on CPU time no other thread wants). Each takes the next job in turn; an error stops both."""
    results: list = [None] * len(jobs)
    todo = deque(range(len(jobs)))

    def drain() -> None:
        while True:
            try:
                i = todo.popleft()  # atomic: the two threads never take the same job
            except IndexError:
                return
            try:
                results[i] = fn(*jobs[i])
            except BaseException:
                todo.clear()
                raise

    def help_at_idle_priority() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread only
        except OSError:
            return  # a helper that cannot yield to everything else would compete: leave the work to the caller
        drain()

    with ThreadPoolExecutor(1, thread_name_prefix="idle-decoder") as helper:
        helped = helper.submit(help_at_idle_priority)
        try:
            drain()
        except BaseException:
            helped.exception()  # wait out the helper's current job; the caller's error is the one reported
            raise
        helped.result()
    return results


def decode_batch(batch: dict[str, np.ndarray], **decoder_args) -> dict[str, np.ndarray]:
    """map_batches task: a stateless ClipDecoder call (tasks reuse Ray's pooled worker processes, so imports and
    storage clients stay warm across epochs, where a fresh actor pool per epoch would start cold: measured 12.7 vs
    15.5 clips/s on 2 CPUs)."""
    return ClipDecoder(**decoder_args)(batch)


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
    """A Ray Dataset of decoded clips, decoded by up to `decoders` concurrent tasks, each decoding one block of about
    `batch_size` videos (larger blocks past 1000 of them, still decoded `batch_size` at a time).

    Tasks are large because Ray Data notices a finished task only on its next scheduling round (0.1-0.2 s later,
    ray-project/ray#45934), while the decoder sits idle (the other task's idle-priority helper thread, see
    ClipDecoder, uses that CPU meanwhile). Measured in one run on 2 CPUs, 256 clips: 16 videos per task
    16.5 clips/s, 32 per task 17.1, 48 per task 17.3 (bigger tasks balance worse at an epoch's end). Small datasets
    get smaller tasks, so that every decoder has work.

    Training rows are shuffled once here (annotation files are often sorted by class) and the order of their blocks
    is drawn anew every epoch; consumers add a local shuffle buffer. (A full `random_shuffle` would need whole CPUs
    for its tasks, which a small machine running the trainers cannot spare.)
    """
    if train:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    # One block per task: blocks of at least the batch size (map_batches would merge smaller ones).
    num_blocks = max(1, min(math.ceil(len(rows) / batch_size), 1000), min(decoders, len(rows)))
    batch_size = max(1, min(batch_size, len(rows) // num_blocks))
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks)
    if train:
        ds = ds.randomize_block_order()
    return ds.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec, "num_classes": num_classes, "multi_label": multi_label, "train": train},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=decoders),
        num_cpus=cpus_per_decoder,
    )


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
        prefetch_batches=2,
    )
    for batch in batches:
        status = batch["status"]
        good = counter.update(status) if counter is not None else status == 0
        yield normalize(batch["clip"]), batch["labels"], batch["index"], good
