"""Benchmark of the data pipeline, as ratios measured in one run:

    python -m benchmarks.data                  # real clips from ../shared/videos if present, else generated ones
    python -m benchmarks.data --clips 60 --no-s3

clips/s of the Ray Data pipeline (decode only the sampled frames, transform, stream uint8 clips) against
(a) the decode limit: a tight loop of decord decoding the same sampled frames in 2 processes, and
(b) a torch DataLoader(num_workers=2) running the same decode and transforms, and
(c) itself with clips delivered in their order (`preserve_order`, the job's default for repeatable runs);
and the same pipeline reading frame shards of the same clips (jobs/prepare_mmit.py at the training short side)
against the raw videos (and a DataLoader on the shards), with the bytes stored per clip, from local disk and from S3
(a moto server on 127.0.0.1, in its own process). Targets: >= 0.9x of (a), >= 1.0x of (b), shards >= 5x raw video.
On S3 it also times moto's range reads: moto reads a whole object to answer a range, so a shard row costs there
what the whole shard costs, which real S3 does not.
Each figure is the second of two passes (the first warms processes and caches alike for every pipeline), in
interleaved rounds so that a slow spell of a shared machine hits each alike; each ratio is taken per round, and
the summary line gives its middle value over the rounds.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

from benchmarks.results import record
from pipeline.data import storage, video
from pipeline.data.dataset import ClipDecoder, ClipSpec, clip_dataset
from pipeline.data.prepare import PrepareSpec, prepare
from pipeline.data.sampling import segment_indices
from pipeline.data.shards import read_split

SPEC = ClipSpec(num_segments=8, short_side=128, crop_size=112)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
# Real h264/mpeg4 clips of ordinary sizes (the 1080p, 1-frame and corrupt ones would measure something else).
REAL_CLIPS = ["mmaction2__demo_demo.mp4", "mmaction2__tests_data_test.mp4", "mmaction2__tests_data_test.avi",
              "moviepy__chaplin.mp4", "moviepy__doc_medias_example.mp4", "moviepy__video_with_failing_audio.mp4",
              "decord__flipping_a_pancake.mkv", "mmaction2__tests_data_rawvideo_dataset_part_0.mp4"]  # fmt: skip


def source_clips(workdir: Path) -> list[Path]:
    if all((SHARED / name).is_file() for name in REAL_CLIPS):
        return [SHARED / name for name in REAL_CLIPS]
    from pipeline.data.synthetic import SyntheticSpec, generate_mmit

    root = generate_mmit(workdir / "synthetic", SyntheticSpec(num_train=16, num_val=8, frames=72, size=256))
    return sorted((root / "videos").rglob("*.mp4"))


def decord_only(uri: str) -> int:
    """The decode limit: decord on the same file object, the same val-mode indices, resized at decode."""
    import decord

    with storage.open_uri(uri) as f:
        reader = decord.VideoReader(f, width=-1, height=SPEC.short_side, num_threads=video.DECORD_THREADS)
        frames = reader.get_batch(list(segment_indices(len(reader), SPEC.num_segments, "val"))).asnumpy()
    return len(frames)


def decode_limit(uris: list[str]) -> float:
    with get_context("spawn").Pool(2) as pool:
        pool.map(decord_only, uris[:4])  # start both processes and import decord before timing
        start = time.perf_counter()
        pool.map(decord_only, uris, chunksize=2)
        return len(uris) / (time.perf_counter() - start)


class _Clips:
    """A torch Dataset doing exactly what the Ray pipeline's decoder does for one row."""

    def __init__(self, uris: list[str]) -> None:
        self.uris = uris
        self.decoder = ClipDecoder(SPEC, num_classes=2, multi_label=True, train=False)

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int):
        clip, status = self.decoder.decode(self.uris[i])
        return clip, status


def torch_dataloader(uris: list[str]) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(_Clips(uris), batch_size=8, num_workers=2, persistent_workers=True,
                        multiprocessing_context="spawn")  # fmt: skip
    for _ in loader:  # first pass: worker start-up and imports
        pass
    start = time.perf_counter()
    count = sum(len(clips) for clips, _ in loader)
    return count / (time.perf_counter() - start)


def ray_pipeline(uris: list[str], preserve_order: bool = False) -> float:
    rows = [{"index": i, "uri": uri, "labels": [0]} for i, uri in enumerate(uris)]
    ds = clip_dataset(rows, SPEC, 2, True, train=False, decoders=2, cpus_per_decoder=1.0)
    ds.context.execution_options.preserve_order = preserve_order  # the job's --preserve-order
    for _ in ds.iter_torch_batches(batch_size=8):  # first pass: worker start-up and imports
        pass
    start = time.perf_counter()
    count = sum(len(batch["clip"]) for batch in ds.iter_torch_batches(batch_size=8))
    return count / (time.perf_counter() - start)


def measure(label: str, uris: list[str], shard_uris: list[str], rounds: int) -> tuple[str, float]:
    """Rounds of all six, interleaved, so that a slow spell of a shared machine hits each alike; each ratio is taken
    per round. Returns the summary line and the shards / raw video ratio, each the middle value over the rounds."""
    ratios = []
    for r in range(rounds):
        limit, loader = decode_limit(uris), torch_dataloader(uris)
        in_order = {flag: ray_pipeline(uris, preserve_order=flag) for flag in (r % 2 == 1, r % 2 == 0)}  # alternated
        ours, ordered = in_order[False], in_order[True]
        from_shards, shard_loader = ray_pipeline(shard_uris), torch_dataloader(shard_uris)
        ratios.append((ours / limit, ours / loader, ordered / ours, from_shards / ours, from_shards / shard_loader))
        print(f"{label}, round {r + 1}/{rounds}: Ray Data {ours:.1f} clips/s | (a) decode limit {limit:.1f} clips/s -> "
              f"{ours / limit:.2f}x | (b) DataLoader(num_workers=2) {loader:.1f} clips/s -> {ours / loader:.2f}x | "
              f"in order {ordered:.1f} clips/s -> {ordered / ours:.2f}x | "
              f"shards {from_shards:.1f} clips/s -> {from_shards / ours:.2f}x raw video, DataLoader on shards "
              f"{shard_loader:.1f} clips/s -> {from_shards / shard_loader:.2f}x", flush=True)  # fmt: skip
    to_limit, to_loader, ordered, to_raw, to_shard_loader = (statistics.median(c) for c in zip(*ratios, strict=True))
    line = (f"{label}, median of {rounds}: (a) {to_limit:.2f}x of the decode limit [target >= 0.9] | "
            f"(b) {to_loader:.2f}x of DataLoader(num_workers=2) [target >= 1.0] | (c) in order (preserve_order, "
            f"the job's default) {ordered:.2f}x | shards {to_raw:.2f}x raw video [target >= 5] and "
            f"{to_shard_loader:.2f}x a DataLoader on the shards")  # fmt: skip
    print(line, flush=True)
    return line, to_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256, help="clips per pass (the sources repeated)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three measurements")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) measurement")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sources = source_clips(workdir)
        dataset = workdir / "dataset"
        local = copy_clips(sources, dataset, args.clips)
        kind = "real" if sources[0].parent == SHARED else "generated"
        print(f"{len(local)} clips from {len(sources)} {kind} sources, {SPEC.num_segments} frames each, short side "
              f"{SPEC.short_side}, crop {SPEC.crop_size}; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback cluster for the benchmark
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        summary = prepare(str(dataset), str(workdir / "shards"), PrepareSpec(short_side=SPEC.short_side))
        shard_uris = [r.uri for r in read_split(str(workdir / "shards"), "training").records]
        bytes_ratio = summary.bytes_out / summary.bytes_in
        lines = [f"{len(local)} {kind} clips per pass, {args.rounds} rounds; stored per clip: video "
                 f"{summary.bytes_in / len(local) / 1e3:.0f} kB, shards {summary.bytes_out / len(local) / 1e3:.0f} kB "
                 f"(JPEG quality 90, short side {SPEC.short_side})"]  # fmt: skip
        line, to_raw = measure("local disk", local, shard_uris, args.rounds)
        lines.append(line)
        if not args.no_s3:
            remote = _upload_to_moto(workdir)
            s3_shards = [r.uri for r in read_split(f"{remote}/shards", "training").records]
            s3_clips = [f"{remote}/dataset/videos/{Path(p).name}" for p in local]
            line, _ = measure("S3 (moto)", s3_clips, s3_shards, args.rounds)
            lines += [line, range_read_cost(s3_shards[0])]
        ray.shutdown()
    last = f"shards vs raw video: {to_raw:.2f}x clips/s, {bytes_ratio:.2f}x bytes"
    record("Data pipeline (Ray Data vs decode limit and DataLoader; shards vs raw video)",
           "\n".join(f"- {line}" for line in [*lines, last]))  # fmt: skip
    print(last)  # the last line, after record()'s own


def range_read_cost(row_uri: str, reads: int = 20) -> str:
    """GETs/s of one shard row's byte range from its shard object against a whole object of the row's size: moto
    reads a whole object to answer a range, which real S3 does not, so this bounds what shards reach on moto."""
    import pyarrow.parquet as pq

    from pipeline.data import storage

    shard_uri, _, group = row_uri.rpartition("#")
    fs, path = storage.filesystem(shard_uri)
    with fs.open(path, "rb") as f:
        columns = pq.ParquetFile(f).metadata.row_group(int(group))
        start = min(columns.column(i).file_offset for i in range(columns.num_columns))
        length = sum(columns.column(i).total_compressed_size for i in range(columns.num_columns))
    alone = f"{path.split('/', 1)[0]}/range-read-probe"
    fs.pipe_file(alone, os.urandom(length))

    def rate(fetch) -> float:
        started = time.perf_counter()
        for _ in range(reads):
            fetch()
        return reads / (time.perf_counter() - started)

    ranged = rate(lambda: fs.cat_file(path, start=start, end=start + length))
    whole = rate(lambda: fs.cat_file(alone))
    return (
        f"moto: a shard row's {length / 1e3:.0f} kB range from its {fs.size(path) / 1e6:.0f} MB shard "
        f"{ranged:.0f} GETs/s, the same bytes as an object of their own {whole:.0f} GETs/s"
    )


def copy_clips(sources: list[Path], dataset: Path, count: int) -> list[str]:
    """`count` distinct copies of the sources (so no pass is served by a cache of the one before) in an MMiT layout
    whose training split lists them all."""
    local = []
    for i in range(count):
        target = dataset / "videos" / f"{i:04d}{sources[i % len(sources)].suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[i % len(sources)], target)
        local.append(str(target))
    (dataset / "trainingSet.csv").write_text("".join(f"{Path(p).name},0\n" for p in local))
    (dataset / "validationSet.csv").write_text(f"{Path(local[0]).name},0\n")
    (dataset / "moments_categories.txt").write_text("clip,0\n")
    return local


def _upload_to_moto(workdir: Path) -> str:
    """Upload the dataset and its shards to a moto S3 server in a process of its own (as s3fs's tests run it): a
    server inside this process would answer requests under the same GIL as the consumer being measured, which no
    real S3 does. Returns the bucket's URI."""
    import boto3

    with socket.socket() as sock:  # a free port for the server
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    atexit.register(server.terminate)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on 127.0.0.1:{port}") from None
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    os.environ.update(env)
    import ray

    # Ray workers were started before these variables existed: restart Ray with them.
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().enable_progress_bars = False
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        client.upload_file(str(path), "bench", str(path.relative_to(workdir)))
    return "s3://bench"


if __name__ == "__main__":
    main()
