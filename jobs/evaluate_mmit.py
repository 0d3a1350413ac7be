"""Evaluate registered models with the paper's multi-view test on a Multi-Moments-in-Time-layout dataset.

    python jobs/evaluate_mmit.py --model models:/tin-mmit@champion --data s3://bucket/mmit --clips 10 --crops 3
    python jobs/evaluate_mmit.py --model models:/tin-mmit/3 --ensemble models:/tin-mmit-16f/1 --clips 2 --crops 3

Every video is scored on K clips x crops views (1: centre crop at the training size; 3: left / centre / right squares
of the full short side), probabilities averaged over views and models, on Ray Data (model replicas on an actor pool,
one GPU each where there are GPUs). The run is logged to MLflow and linked to each model version. The last line of
output is one JSON object: val_map, val_map_classes (top-1/top-5/mean class accuracy for single-label data), views,
videos, skipped, run_id.
On a cluster without GPUs give --replicas and --decoders one count (about one per CPU): each replica then decodes
its own videos.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory


@dataclass
class Evaluate:
    model: str = "models:/tin-mmit@champion"
    """MLflow model URI"""
    data: str = ""
    """dataset root (local or s3://) in the MMiT layout or a frame-shard dataset; empty: the job's embedded dataset"""
    format: Literal["mmit", "kinetics", "sthv1", "sthv2", "jester", "ucf101", "hmdb51", "list"] = "mmit"
    """annotation layout under --data (pipeline/data/layouts.py)"""
    split: Literal["training", "validation"] = "validation"
    clips: int = 1
    """clips per video, spread evenly within each segment"""
    crops: Literal[1, 3] = 1
    """1: centre crop at the training frame size; 3: left / centre / right at the full short side"""
    ensemble: list[str] = field(default_factory=list)
    """more model URIs whose probabilities are averaged with --model's (e.g. 8- and 16-segment models)"""
    num_segments: int = 0
    """clip length for every model (TSN/TSM only); 0: each model's own"""
    replicas: int = 1
    """model replicas (one GPU each where the cluster has GPUs)"""
    decoders: int = 2
    """concurrent decode tasks"""
    experiment: str = "tin-mmit-evaluation"
    """MLflow experiment of the evaluation run"""
    mlflow_uri: str = ""
    """tracking URI (default: $MLFLOW_TRACKING_URI, else local)"""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = tyro.cli(Evaluate, args=argv, description=__doc__)
    import mlflow

    from pipeline.data.layouts import read_dataset
    from pipeline.registry.evaluate import evaluate, log_evaluation
    from pipeline.registry.tracking import tracking_uri
    from pipeline.train.config import JobConfig, usage_error
    from pipeline.train.driver import connect_ray, default_data_root

    if args.clips < 1 or args.replicas < 1 or args.decoders < 1 or args.num_segments < 0:
        usage_error(ValueError("--clips, --replicas and --decoders must be >= 1, --num-segments >= 0"))
    uri = tracking_uri(args.mlflow_uri)
    mlflow.set_tracking_uri(uri)
    root = args.data or default_data_root(JobConfig())
    # The model's class ids, not ones derived from this split's rows (a Kinetics split may lack some classes); read
    # from its MLmodel metadata, so no weights are loaded here.
    class_names = mlflow.models.get_model_info(args.model).metadata["class_names"]
    try:
        manifest = read_dataset(root, args.format, args.split, class_names)
    except (ValueError, FileNotFoundError) as e:
        usage_error(e)
    connect_ray()
    models = [args.model, *args.ensemble]
    result = evaluate(models, manifest, uri, args.clips, args.crops, args.num_segments or None, args.replicas,
                      args.decoders)  # fmt: skip
    params = {k: v for k, v in asdict(args).items() if k not in ("mlflow_uri", "ensemble")}
    result.run_id = log_evaluation(result, models, manifest, args.experiment, {**params, "data": root,
                                                                              "models": ",".join(models)})  # fmt: skip
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
