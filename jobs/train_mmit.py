"""Train TIN (or TSM/TSN) on a Multi-Moments-in-Time-layout dataset with Ray Train, tracked in MLflow.

    python jobs/train_mmit.py                      # embedded default: local Ray, generated data, local MLflow
    python jobs/train_mmit.py --data s3://bucket/mmit --backbone resnet50 --frame-size 224 --num-workers 8 --use-gpu
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_mmit.py --name my-run

Rerunning with the same --name resumes from its last checkpoint. Each run registers a new model version; the alias
`champion` moves only when the new version has the better validation mAP.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipeline.config import TrainConfig, add_config_arguments, config_from_args  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, TrainConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, TrainConfig)
        from pipeline.train_job import preflight, run_training, summary

        datasets = preflight(cfg)  # flags, annotations, weights: all checked before any Ray work
    except ValueError as e:
        parser.error(str(e))
    outcome = run_training(cfg, datasets)
    print(summary(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
