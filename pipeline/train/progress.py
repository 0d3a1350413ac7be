"""What a user watching `ray job logs` sees: one line per epoch from the controller, and a short line every few
steps from rank 0, instead of Ray's raw report dicts.

    epoch 3/40  train_loss 0.391  val_map 0.643 (best 0.651 @ 2)  39.0 clips/s  data_wait 7%  eta 12m
"""

from __future__ import annotations

import logging
import math

from ray.train import UserCallback

logger = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds // 3600:.0f}h{seconds % 3600 / 60:02.0f}m"


def epoch_summary(metrics: dict, epochs: int, best: tuple[float, int]) -> dict:
    """What the epoch line and the Tune trial table show beyond the report: epochs done, the best val_map so far
    (`best`: value, 0-based epoch) and the time left, assuming epochs like this one."""
    done = int(metrics["epoch"]) + 1
    left = (epochs - done) * (metrics.get("train_seconds", 0.0) + metrics.get("val_seconds", 0.0))
    return {
        "epochs_done": done,
        "best_val_map": best[0],
        "best_epoch": best[1] + 1,
        "eta_s": left,
        "eta": duration(left),
    }


def epoch_line(metrics: dict, epochs: int, best: tuple[float, int]) -> str:
    s = epoch_summary(metrics, epochs, best)
    return (f"epoch {s['epochs_done']}/{epochs}  train_loss {metrics['train_loss']:.3f}  val_map "
            f"{metrics['val_map']:.3f} (best {s['best_val_map']:.3f} @ {s['best_epoch']})  "
            f"{metrics['clips_per_s']:.1f} clips/s  data_wait {metrics['data_wait_fraction']:.0%}  "
            f"eta {s['eta']}")  # fmt: skip


class BestSoFar:
    """The best val_map seen and its epoch, updated report by report."""

    def __init__(self) -> None:
        self.best = (-math.inf, -1)

    def update(self, report: dict) -> tuple[float, int]:
        if report["val_map"] > self.best[0]:
            self.best = (report["val_map"], int(report["epoch"]))
        return self.best


class EpochProgress(UserCallback):
    """Ray Train callback (runs in the controller, whose output reaches the driver's log): one line per epoch."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.best = BestSoFar()

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0] if metrics else {}
        if "val_map" in report:
            print(epoch_line(report, self.epochs, self.best.update(report)), flush=True)


def quiet_ray_reports() -> None:
    """Ray Train logs every report's whole dict at INFO from the worker (a logger named after its file)."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def step_line(epoch: int, step: int, steps: int, loss: float, clips_per_s: float) -> str:
    return f"epoch {epoch + 1} step {step}/{steps}  loss {loss:.3f}  {clips_per_s:.1f} clips/s"
