"""The sweep driver: Ray Tune over TIN's interlace groups, reverse offsets, shift_div, learning rate and weight
decay, with ASHA stopping poor trials early on validation mAP, every trial an MLflow child run of one sweep run.

Each trial is a plain function that launches a TorchTrainer (the Ray Train V2 pattern: `Tuner(trial_fn)` with a
`TuneReportCallback`, not `Tuner(trainer)`), so a trial can use several training workers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace

import ray
from pyarrow import fs as pafs
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from pipeline import storage
from pipeline.config import TrainConfig, _help
from pipeline.tracking import RUN_NAME_TAG, Tracker, finish_run, redact, start_run, tracking_uri
from pipeline.train_job import (
    Datasets,
    build_trainer,
    connect_ray,
    preflight,
    raise_on_bad_videos,
    register_checkpoint,
    trial_cpus,
)
from pipeline.train_loop import model_from_config

logger = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    num_samples: int = _help("trials to sample (with --grid: samples per grid point)", default=4)
    groups_choices: tuple[int, ...] = _help("TIN learned offset groups to try (paper Table 5: 1, 2, 4)",
                                            default=(1, 2, 4))  # fmt: skip
    reverse_choices: tuple[str, ...] = _help("reverse offsets to try: true and/or false", default=("true", "false"))
    shift_div_choices: tuple[int, ...] = _help("shift_div values to try", default=(4, 8))
    lr_range: tuple[float, ...] = _help("learning-rate range, sampled log-uniformly", default=(0.005, 0.05))
    weight_decay_range: tuple[float, ...] = _help("weight-decay range, sampled log-uniformly", default=(1e-5, 1e-3))
    grid: bool = _help("grid-search the categorical choices instead of sampling them", default=False)
    grace_period: int = _help("ASHA: epochs every trial runs before it can be stopped", default=1)
    max_concurrent_trials: int = _help("0: as many as the cluster's CPUs (or GPUs) fit", default=0)
    sweep_name: str = _help("sweep name (MLflow parent run, Tune experiment)", default="")

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {self.num_samples}")
        for name in ("lr_range", "weight_decay_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"--{name.replace('_', '-')} must be two values 0 < low <= high")
        if not set(self.reverse_choices) <= {"true", "false"}:
            raise ValueError(f"--reverse-choices must be true and/or false, got {self.reverse_choices}")


def search_space(sweep: SweepConfig) -> dict:
    categorical = tune.grid_search if sweep.grid else tune.choice
    return {
        "groups": categorical(list(sweep.groups_choices)),
        "reverse": categorical([r == "true" for r in sweep.reverse_choices]),
        "shift_div": categorical(list(sweep.shift_div_choices)),
        "lr": tune.loguniform(*sweep.lr_range),
        "weight_decay": tune.loguniform(*sweep.weight_decay_range),
    }


SAMPLED = ("groups", "reverse", "shift_div", "lr", "weight_decay")
TRIAL_CPUS = 0.01  # what a trial's own driver function reserves (Tune refuses zero)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


def run_trial(config: dict, base: TrainConfig, datasets: Datasets, context: dict) -> None:
    """One Tune trial: a full training run (its own TorchTrainer and MLflow child run) with the sampled values."""
    trial_id = tune.get_context().get_trial_id()
    cfg = replace(base, **{k: config[k] for k in SAMPLED}, name=trial_run_name(context["sweep_name"], trial_id))
    tracker = start_run(context["tracking_uri"], base.experiment, cfg.name, {**cfg.to_dict(), "trial_id": trial_id},
                        parent_run_id=context["parent_run_id"])  # fmt: skip
    try:
        cfg.validate()
        model_from_config(cfg, datasets.train.num_classes)  # a bad combination fails here, not in every retry
        ray.data.DataContext.get_current().enable_progress_bars = False
        trainer = build_trainer(cfg, datasets, tracker, cfg.name, callbacks=[TuneReportCallback()],
                                cpu_budget=context["cpu_budget"])  # fmt: skip
        result = trainer.fit()
        if result.error:
            raise result.error
        raise_on_bad_videos(result.metrics, cfg, datasets.root)
        finish_run(tracker)
    except BaseException as e:
        tracker.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
        finish_run(tracker, "FAILED")
        raise


@dataclass
class TrialRow:
    trial_id: str
    status: str
    config: dict
    best_val_map: float
    epochs: int
    error: str = ""


def trial_id_of(result) -> str:
    """Tune's trial id ("<experiment>_<index>"), also in the trial's folder name run_trial_<id>_..."""
    if result.metrics and "trial_id" in result.metrics:
        return result.metrics["trial_id"]
    parts = result.path.rsplit("/", 1)[-1].split("_")
    return f"{parts[2]}_{parts[3]}"


def summarize(results, max_epochs: int) -> list[TrialRow]:
    """One row per trial: DONE (all epochs), STOPPED (early, by ASHA) or ERROR."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        maps = history["val_map"].dropna().tolist() if history is not None and "val_map" in history else []
        rows.append(
            TrialRow(
                trial_id=trial_id_of(result),
                status="ERROR" if result.error else ("DONE" if len(maps) >= max_epochs else "STOPPED"),
                config={k: result.config[k] for k in SAMPLED},
                best_val_map=max(maps) if maps else float("nan"),
                epochs=len(maps),
                error=_last_line(result.error),
            )
        )
    return rows


def _last_line(error: BaseException | None) -> str:
    """The root cause of a trial's error: Ray wraps it, and its own text ends the message."""
    return str(error).strip().splitlines()[-1][:300] if error else ""


def format_table(rows: list[TrialRow]) -> str:
    head = (f"{'trial':<14}{'status':<8}{'groups':>7}{'reverse':>9}{'shift_div':>10}{'lr':>10}{'wd':>10}"
            f"{'best val_map':>14}{'epochs':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: -(r.best_val_map if r.best_val_map == r.best_val_map else -1)):
        c = r.config
        lines.append(
            f"{r.trial_id:<14}{r.status:<8}{c['groups']:>7}{c['reverse']!s:>9}{c['shift_div']:>10}{c['lr']:>10.4g}"
            f"{c['weight_decay']:>10.2g}{r.best_val_map:>14.4f}{r.epochs:>8}" + (f"  {r.error}" if r.error else "")
        )
    return "\n".join(lines)


@dataclass
class SweepOutcome:
    parent_run_id: str
    table: str
    rows: list[TrialRow]
    best_trial: str
    version: str
    message: str


def best_trial_checkpoint(results, base: TrainConfig):
    """The checkpoint with the highest val_map of the best trial, read back from the trial's storage."""
    best = results.get_best_result(metric="val_map", mode="max", scope="all", filter_nan_and_inf=True)
    if best is None or best.error is not None:
        raise RuntimeError("no trial finished with a validation mAP")
    fs, path = storage.pyarrow_filesystem(base.storage)
    trial_run = best.metrics["checkpoint_path"].rsplit("/", 1)[0]  # .../<run name>/epoch-NNNN
    filesystem = fs or pafs.LocalFileSystem()
    candidates = []
    for info in filesystem.get_file_info(pafs.FileSelector(trial_run)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("epoch-"):
            with filesystem.open_input_stream(f"{info.path}/meta.json") as f:
                candidates.append((json.loads(f.read())["metrics"]["val_map"], info.path))
    val_map, best_path = max(candidates)
    return best, ray.train.Checkpoint(best_path, filesystem=fs) if fs else ray.train.Checkpoint(best_path)


def run_sweep(base: TrainConfig, sweep: SweepConfig, datasets: Datasets | None = None) -> SweepOutcome:
    datasets = datasets or preflight(base)
    sweep.validate()
    sweep_name = sweep.sweep_name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking_uri(base.mlflow_uri)
    connect_ray()
    params = {**base.to_dict(), **{f"sweep_{k}": v for k, v in asdict(sweep).items()}}
    parent = start_run(uri, base.experiment, sweep_name, params)
    logger.info("MLflow sweep run %s in %s", parent.run_id, redact(uri))
    resources = ray.cluster_resources()
    if base.use_gpu:
        fit = int(resources.get("GPU", 0) // base.num_workers)
    else:
        fit = int(resources.get("CPU", 1) // trial_cpus(base))
    concurrent = sweep.max_concurrent_trials or max(1, fit)
    storage_fs, storage_path = storage.pyarrow_filesystem(base.storage)
    context = {"sweep_name": sweep_name, "tracking_uri": uri, "parent_run_id": parent.run_id,
               "cpu_budget": resources.get("CPU", 1) / concurrent - TRIAL_CPUS}  # fmt: skip
    tuner = tune.Tuner(
        # The trial function only drives its TorchTrainer: it reserves next to no CPU, its workers and decoders do.
        tune.with_resources(
            tune.with_parameters(run_trial, base=base, datasets=datasets, context=context), {"CPU": TRIAL_CPUS}
        ),
        param_space=search_space(sweep),
        tune_config=tune.TuneConfig(
            metric="val_map",
            mode="max",
            num_samples=sweep.num_samples,
            max_concurrent_trials=concurrent,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                    grace_period=min(sweep.grace_period, base.epochs), reduction_factor=2),  # fmt: skip
        ),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage_path, storage_filesystem=storage_fs,
                                  failure_config=tune.FailureConfig(max_failures=0)),  # fmt: skip
    )
    try:
        results = tuner.fit()
        rows = summarize(results, base.epochs)
        children = _child_runs(parent)
        _record_trial_statuses(parent, children, sweep_name, rows)
        table = format_table(rows)
        parent.log_text(table + "\n", "sweep_summary.txt")
        parent.log_dict({"trials": [r.__dict__ for r in rows]}, "sweep_summary.json")
        best, checkpoint = best_trial_checkpoint(results, base)
        best_cfg = replace(base, **{k: best.config[k] for k in SAMPLED})
        trial_tracker = _trial_tracker(parent, children, trial_run_name(sweep_name, trial_id_of(best)))
        _, version, _, message = register_checkpoint(best_cfg, trial_tracker, datasets, checkpoint)
        parent.set_tag("best_trial", trial_id_of(best))
        parent.set_tag("registered_version", f"{base.register_as}/{version}")
        finish_run(parent)
    except BaseException:
        finish_run(parent, "FAILED")
        raise
    return SweepOutcome(parent.run_id, table, rows, trial_id_of(best), version, message)


TRIAL_RUN_STATUS = {"DONE": "FINISHED", "STOPPED": "KILLED", "ERROR": "FAILED"}


def _record_trial_statuses(parent: Tracker, children: dict[str, list], sweep_name: str, rows: list[TrialRow]) -> None:
    """End each trial's MLflow run as Tune saw the trial: ASHA stops a trial by ending its process, which either
    leaves the run RUNNING or interrupts it into FAILED, so the driver records the truth: KILLED for a trial
    stopped early, FINISHED for one that ran every epoch, FAILED for one that errored."""
    client = parent.client
    for row in rows:
        for run in children.get(trial_run_name(sweep_name, row.trial_id), []):
            if row.status == "STOPPED":
                client.set_tag(run.info.run_id, "stopped_early", "ASHA")
                if "error" in run.data.tags:  # the interruption of an early stop, not an error of the trial
                    client.delete_tag(run.info.run_id, "error")
            client.set_terminated(run.info.run_id, status=TRIAL_RUN_STATUS[row.status])


def _child_runs(parent: Tracker, page_size: int = 1000) -> dict[str, list]:
    """The sweep's MLflow child runs (one per trial) by run name, fetched in one paged search."""
    experiment_id = parent.client.get_run(parent.run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
    children: dict[str, list] = {}
    token = None
    while True:
        page = parent.client.search_runs([experiment_id], filter_string=query, max_results=page_size, page_token=token)
        for run in page:
            children.setdefault(run.data.tags.get(RUN_NAME_TAG, ""), []).append(run)
        token = page.token
        if not token:
            return children


def _trial_tracker(parent: Tracker, children: dict[str, list], run_name: str) -> Tracker:
    """The MLflow child run of a trial (found by its run name), where its model is logged."""
    if not children.get(run_name):
        raise RuntimeError(f"no MLflow run named {run_name}")
    return Tracker(parent.uri, children[run_name][0].info.run_id)
