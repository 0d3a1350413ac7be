"""Batch prediction's clips/s (jobs/batch_predict.py's Ray Data path: decode tasks feeding a model replica) against a
bare loop doing the same decode and model in one process, on the same CPUs.

    python -m benchmarks.predict
    python -m benchmarks.predict --videos 16 --rounds 1 --no-record    # a smoke run

A randomly initialised TSM-R18 (8 segments, 112 px crops of a 128 px short side) is registered in a temporary MLflow
store; the videos are generated clips of 128 px. The Ray Data rate is given with and without its start (actors,
model loading).
Target: the Ray Data path at least the bare loop's clips/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from benchmarks.results import record
from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.data.views import ViewSpec, video_views
from pipeline.registry.batch import batch_predict, list_inputs
from pipeline.registry.scoring import load_classifier
from pipeline.registry.serving import model_config
from pipeline.registry.tracking import log_and_register_model, start_run
from tin_core import ModelConfig

SEGMENTS, FRAME, SHORT = 8, 112, 128


def register_model(tracking: str, tmp: Path, class_names: list[str]) -> str:
    model = ModelConfig(arch="tsm", num_segments=SEGMENTS)
    weights = tmp / "model.pt"
    torch.save(model.build(len(class_names)).state_dict(), weights)
    config = model_config(model, len(class_names), FRAME, SHORT, class_names, True)
    tracker = start_run(tracking, "benchmark", "predict", {})
    example = np.zeros((1, SEGMENTS, FRAME, FRAME, 3), np.uint8)
    version, _, _ = log_and_register_model(tracker, weights, config, "benchmark-predict", 0.0, example)
    return f"models:/benchmark-predict/{version}"


def bare_loop(model_uri: str, uris: list[str], batch: int = 8) -> float:
    """clips/s of decode + model in this process, batch by batch."""
    classifier = load_classifier(model_uri)
    spec = ViewSpec.of_model(classifier.config)
    start = time.perf_counter()
    for i in range(0, len(uris), batch):
        classifier.scores(np.stack([video_views(uri, spec)[0] for uri in uris[i : i + batch]]))
    return len(uris) / (time.perf_counter() - start)


def ray_path(model_uri: str, uris_file: str, output: str, tracking: str, replicas: int) -> tuple[float, float]:
    """(clips/s of the whole job, clips/s after its first batch: the rate millions of clips would see)."""
    start = time.perf_counter()
    summary = batch_predict(model_uri, uris_file, output, tracking, replicas=replicas, decoders=replicas)
    return summary["videos"] / (time.perf_counter() - start), summary["videos_per_s_after_first_batch"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=192, help="generated videos to predict")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both paths")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate_mmit(tmp / "data", SyntheticSpec(num_train=8, num_val=args.videos, frames=32, size=SHORT))
        uris = list_inputs(str(root / "validationSet.csv"))
        uris_file = tmp / "uris.txt"
        uris_file.write_text("\n".join(uris) + "\n")
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        import mlflow

        mlflow.set_tracking_uri(tracking)
        model_uri = register_model(tracking, tmp, [f"class-{k}" for k in range(10)])
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        replicas = cpus  # on CPUs, one replica per CPU, each decoding its own videos (Ray fuses the two steps)
        bare, piped, steady = [], [], []
        for r in range(args.rounds):
            bare.append(bare_loop(model_uri, uris))
            whole, after_first = ray_path(model_uri, str(uris_file), str(tmp / "out.parquet"), tracking, replicas)
            piped.append(whole)
            steady.append(after_first)
            print(f"round {r + 1}/{args.rounds}: Ray Data {whole:.1f} clips/s ({after_first:.1f} after its first "
                  f"batch) | bare loop {bare[-1]:.1f} clips/s -> {whole / bare[-1]:.2f}x", flush=True)  # fmt: skip
        ray.shutdown()
    ratio = statistics.median(p / b for p, b in zip(piped, bare, strict=True))
    steady_ratio = statistics.median(s / b for s, b in zip(steady, bare, strict=True))
    lines = [
        f"{args.videos} generated videos at {SHORT} px, TSM-R18 {SEGMENTS} x {FRAME} px, {cpus} CPUs: "
        f"Ray Data {statistics.median(piped):.1f} clips/s ({replicas} replicas, each decoding its videos; "
        f"{statistics.median(steady):.1f} after the first batch), bare loop {statistics.median(bare):.1f} clips/s "
        f"({torch.get_num_threads()} torch threads)",
        f"batch prediction vs bare loop after the start: {steady_ratio:.2f}x clips/s",
        f"batch prediction vs bare loop: {ratio:.2f}x clips/s [target >= 1.0]",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record("Batch prediction (Ray Data vs a bare loop)", "\n".join(f"- {line}" for line in lines))


if __name__ == "__main__":
    main()
