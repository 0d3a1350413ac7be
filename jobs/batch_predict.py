"""Predict the top-k labels of many videos with a registered model on Ray Data, written as one Parquet file.

    python jobs/batch_predict.py --input s3://bucket/clips/ --output s3://bucket/predictions.parquet
    python jobs/batch_predict.py --model models:/tin-mmit/3 --input uris.txt --output preds.parquet --top-k 3
    ray job submit --working-dir . -- python jobs/batch_predict.py --input s3://bucket/mmit/validationSet.csv ...

--input is a folder or s3:// prefix (videos found by extension), a text file of paths or URIs, or an MMiT CSV. Each
video is decoded once (the validation view) and scored by model replicas on an actor pool (one GPU each where there
are GPUs). Rows: uri, top_k_labels, top_k_scores, error (null when the video decoded). The output appears whole
when the job ends, replacing any earlier one; the last line of output is a JSON summary.
On a cluster without GPUs give --replicas and --decoders one count (about one per CPU): each replica then decodes
its own videos.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory


@dataclass
class BatchPredict:
    input: str
    """folder or s3:// prefix of videos, text file of URIs, or MMiT CSV"""
    output: str
    """Parquet file to write (local path or s3://)"""
    model: str = "models:/tin-mmit@champion"
    """MLflow model URI"""
    top_k: int = 5
    """labels per video"""
    replicas: int = 1
    """model replicas (one GPU each where the cluster has GPUs)"""
    decoders: int = 2
    """concurrent decode tasks"""
    mlflow_uri: str = ""
    """tracking URI (default: $MLFLOW_TRACKING_URI, else local)"""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = tyro.cli(BatchPredict, args=argv, description=__doc__)
    import mlflow

    from pipeline.data.annotations import AnnotationError
    from pipeline.registry.batch import batch_predict
    from pipeline.registry.tracking import tracking_uri
    from pipeline.train.config import usage_error
    from pipeline.train.driver import connect_ray

    if args.top_k < 1 or args.replicas < 1 or args.decoders < 1:
        usage_error(ValueError("--top-k, --replicas and --decoders must be >= 1"))
    uri = tracking_uri(args.mlflow_uri)
    mlflow.set_tracking_uri(uri)
    connect_ray()
    try:
        summary = batch_predict(args.model, args.input, args.output, uri, args.top_k,
                                args.replicas, args.decoders)  # fmt: skip
    except (ValueError, AnnotationError) as e:
        usage_error(e)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
