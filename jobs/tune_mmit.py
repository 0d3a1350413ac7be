"""Sweep TIN's interlace groups, reverse offsets, shift_div, learning rate and weight decay with Ray Tune (ASHA on
validation mAP). Every trial is a full Ray Train run and an MLflow child run of one sweep run; the best trial's model
is registered (the champion alias moves only if it beats the current champion).

    python jobs/tune_mmit.py --num-samples 8
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/tune_mmit.py --num-samples 8
    python jobs/tune_mmit.py --grid --groups-choices 1 2 4 --reverse-choices True False --num-samples 1   # Table 5
    python jobs/tune_mmit.py --search optuna --num-samples 16 --name tin-sweep   # rerun the same to resume it

Training flags (--data, --epochs, --backbone, ...) set the base configuration of every trial.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipeline.train.config import parse_cli, usage_error  # noqa: E402
from pipeline.train.tune import SweepJobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_cli(SweepJobConfig, argv, __doc__)
    from pipeline.train.tune import SweepInterrupted, preflight_sweep, run_sweep

    try:
        datasets = preflight_sweep(cfg)
    except ValueError as e:
        usage_error(e)
    try:
        outcome = run_sweep(cfg, datasets)
    except SweepInterrupted as e:
        print(e, file=sys.stderr)
        return 130
    print(outcome.table)
    print(f"best trial {outcome.best_trial}; {outcome.message}")
    print(f"MLflow sweep run: {outcome.parent_run_id} (compare trials: open the run's children in the MLflow UI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
