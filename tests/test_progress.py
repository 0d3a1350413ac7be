"""The progress a user watching `ray job logs` sees: the per-epoch line, its callback and the closing summary."""

from __future__ import annotations

import logging

from pipeline.train.config import JobConfig
from pipeline.train.progress import (
    BestSoFar,
    EpochProgress,
    duration,
    epoch_line,
    epoch_summary,
    quiet_ray_reports,
    step_line,
)
from pipeline.train.results import TrainOutcome, summary


def report(epoch: int, val_map: float, seconds: float = 30.0) -> dict:
    return {"epoch": epoch, "train_loss": 0.3912, "val_map": val_map, "clips_per_s": 39.04,
            "data_wait_fraction": 0.071, "train_seconds": seconds - 10, "val_seconds": 10.0}  # fmt: skip


def test_epoch_line_names_progress_best_rate_and_time_left():
    line = epoch_line(report(2, 0.643), 40, (0.651, 1))
    assert line == (
        "epoch 3/40  train_loss 0.391  val_map 0.643 (best 0.651 @ 2)  39.0 clips/s  data_wait 7%  eta 18m"
    )  # fmt: skip  37 epochs left x 30 s
    assert epoch_line(report(39, 0.7), 40, (0.7, 39)).endswith("eta 0s")
    assert [duration(s) for s in (5, 125, 7260)] == ["5s", "2m", "2h01m"]
    assert step_line(0, 50, 200, 0.41234, 12.34) == "epoch 1 step 50/200  loss 0.412  12.3 clips/s"


def test_epoch_summary_is_what_the_tune_table_adds():
    best = BestSoFar()
    for epoch, val_map in enumerate((0.5, 0.7)):
        best.update(report(epoch, val_map))
    assert best.update(report(2, 0.6)) == (0.7, 1)
    summary = epoch_summary(report(2, 0.6), 40, best.best)
    assert summary == {"epochs_done": 3, "best_val_map": 0.7, "best_epoch": 2, "eta_s": 37 * 30.0, "eta": "18m"}


def test_callback_prints_one_line_per_epoch_keeping_the_best(capsys):
    progress = EpochProgress(epochs=3)
    for epoch, val_map in enumerate((0.5, 0.7, 0.6)):
        progress.after_report(None, [report(epoch, val_map), report(epoch, val_map)], None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "(best 0.500 @ 1)" in lines[0] and "(best 0.700 @ 2)" in lines[2]


def test_ray_report_dicts_are_quieted_and_step_logging_is_on_by_default():
    from ray.train.v2._internal.execution import context

    quiet_ray_reports()
    assert not logging.getLogger(context.__file__).isEnabledFor(logging.INFO)
    assert JobConfig().tracking.log_every_steps == 50  # a few lines per epoch, not one per batch


def test_the_summary_counts_the_best_epoch_as_the_epoch_lines_do():
    metrics = {"epoch": 8, "val_map": 0.736, "val_map_classes": 0.678, "train_loss": 0.202, "clips_per_s": 28.7}
    outcome = TrainOutcome("run", "sqlite:///m.db", "exp", metrics, metrics, {"a": 0.5}, "/ckpt/epoch-0008", "m", "2",
                           False, "m version 2 registered")  # fmt: skip
    assert summary(outcome).startswith("best epoch 9: val_map 0.7360")  # the line above it: (best 0.736 @ 9)
    assert "(best 0.736 @ 9)" in epoch_line(report(8, 0.736), 10, (0.736, 8))
