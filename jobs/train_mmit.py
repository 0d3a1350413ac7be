"""Train TIN (or TSM/TSN) on a Multi-Moments-in-Time-layout dataset with Ray Train, tracked in MLflow.

    python jobs/train_mmit.py                      # embedded default: local Ray, generated data, local MLflow
    python jobs/train_mmit.py --data s3://bucket/mmit --backbone resnet50 --frame-size 224 --num-workers 8 --use-gpu
    python jobs/train_mmit.py --config jobs/configs/mmit_tin_r50.yaml --print-config
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_mmit.py --name my-run

Rerunning with the same --name resumes from its last checkpoint. Each run registers a new model version; the alias
`champion` moves only when the new version has the better validation mAP.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipeline.train.config import JobConfig, parse_cli, usage_error  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_cli(JobConfig, argv, __doc__)
    from pipeline.train.driver import preflight, run_training
    from pipeline.train.results import summary

    try:
        datasets = preflight(cfg)  # annotations, weights: all checked before any Ray work
    except ValueError as e:
        usage_error(e)
    print(summary(run_training(cfg, datasets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
