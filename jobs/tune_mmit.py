"""Sweep TIN's interlace groups, reverse offsets, shift_div, learning rate and weight decay with Ray Tune (ASHA on
validation mAP). Every trial is a full Ray Train run and an MLflow child run of one sweep run; the best trial's model
is registered (the champion alias moves only if it beats the current champion).

    python jobs/tune_mmit.py --num-samples 8
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/tune_mmit.py --num-samples 8
    python jobs/tune_mmit.py --grid --groups-choices 1 2 4 --reverse-choices true false --num-samples 1   # Table 5

Training flags (--data, --epochs, --backbone, ...) set the base configuration of every trial.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipeline.config import TrainConfig, add_config_arguments, config_from_args  # noqa: E402
from pipeline.tune_job import SweepConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, TrainConfig)
    add_config_arguments(parser.add_argument_group("sweep"), SweepConfig, with_config_file=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        base = config_from_args(args, TrainConfig, ignore=SweepConfig)
        sweep = config_from_args(args, SweepConfig, ignore=TrainConfig, use_config_file=False)
        sweep.validate()
        from pipeline.tune_job import preflight, run_sweep

        datasets = preflight(base)
    except ValueError as e:
        parser.error(str(e))
    outcome = run_sweep(base, sweep, datasets)
    print(outcome.table)
    print(f"best trial {outcome.best_trial}; {outcome.message}")
    print(f"MLflow sweep run: {outcome.parent_run_id} (compare trials: open the run's children in the MLflow UI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
