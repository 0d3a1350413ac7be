"""Predict the top-k labels of videos (local paths or URIs, e.g. s3://...) with a registered model.

    python jobs/predict.py video.mp4 other.mp4
    python jobs/predict.py --model models:/tin-mmit/3 --top-k 3 --mlflow-uri http://mlflow:5000 s3://bucket/clip.mp4

Each video prints as one line of its top-k labels and probabilities (or why it could not be decoded; the exit
status is then 1). For many videos, use jobs/batch_predict.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", help="video paths or URIs")
    parser.add_argument("--model", default="models:/tin-mmit@champion", help="MLflow model URI")
    parser.add_argument("--top-k", type=int, default=5, help="labels to print per video")
    parser.add_argument("--mlflow-uri", default="", help="tracking URI (default: $MLFLOW_TRACKING_URI, else local)")
    args = parser.parse_args(argv)

    import mlflow

    from pipeline.registry.predict import predict_top_k
    from pipeline.registry.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(args.mlflow_uri))
    failed = 0
    for video, top, error in predict_top_k(args.model, args.videos, args.top_k):
        failed += error is not None
        print(f"{video}: " + (f"not decoded ({error})" if error else ", ".join(f"{name} {p:.3f}" for name, p in top)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
