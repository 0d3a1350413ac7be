"""The sweep driver: Ray Tune over TIN's interlace groups, reverse offsets, shift_div, learning rate and weight
decay (random or Optuna search), with ASHA stopping poor trials early on validation mAP, every trial an MLflow child
run of one sweep run. Rerunning a sweep under the same name resumes it: finished trials are kept, unfinished ones
run again (their training resumes from its last checkpoint).

Each trial is a plain function that launches a TorchTrainer (the Ray Train V2 pattern: `Tuner(trial_fn)` with a
`TuneReportCallback`, not `Tuner(trainer)`), so a trial can use several training workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import ray
from mlflow.tracking import MlflowClient
from pyarrow import fs as pafs
from ray import tune
from ray.tune import CLIReporter
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from pipeline.data import storage
from pipeline.registry.tracking import RUN_NAME_TAG, Tracker, finishing, redact, start_run, tracking_uri
from pipeline.train.config import JobConfig, flat_values, override
from pipeline.train.driver import Datasets, build_trainer, connect_ray, preflight, trial_cpus
from pipeline.train.loop import META_FILE, checkpoint_epoch
from pipeline.train.progress import BestSoFar, epoch_summary
from pipeline.train.results import raise_on_bad_videos, register_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    num_samples: int = 4
    """trials to sample (with --grid: samples per grid point)"""
    groups_choices: tuple[int, ...] = (1, 2, 4)
    """TIN learned offset groups to try (paper Table 5: 1, 2, 4)"""
    reverse_choices: tuple[bool, ...] = (True, False)
    """reverse offsets to try"""
    shift_div_choices: tuple[int, ...] = (4, 8)
    """shift_div values to try"""
    lr_range: tuple[float, float] = (0.005, 0.05)
    """learning-rate range, sampled log-uniformly"""
    weight_decay_range: tuple[float, float] = (1e-5, 1e-3)
    """weight-decay range, sampled log-uniformly"""
    grid: bool = False
    """grid-search the categorical choices instead of sampling them"""
    search: Literal["random", "optuna"] = "random"
    """how trials are drawn: at random, or by Optuna's TPE from the trials so far"""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped"""
    max_concurrent_trials: int = 0
    """0: as many as the cluster's CPUs (or GPUs) fit"""


@dataclass
class SweepJobConfig(JobConfig):
    """The training job's sections (every trial's base configuration) and the sweep's own."""

    sweep: SweepConfig = field(default_factory=SweepConfig)

    def validate(self) -> None:
        super().validate()
        s = self.sweep
        if s.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {s.num_samples}")
        for name in ("lr_range", "weight_decay_range"):
            low, high = getattr(s, name)
            if not 0 < low <= high:
                raise ValueError(f"--{name.replace('_', '-')} must be two values 0 < low <= high, got {low}, {high}")
        if not (s.groups_choices and s.reverse_choices and s.shift_div_choices):
            raise ValueError("--groups-choices, --reverse-choices and --shift-div-choices need at least one value")
        if s.grid and s.search == "optuna":
            raise ValueError("--grid and --search optuna do not combine: Optuna draws every value itself")

    @property
    def base(self) -> JobConfig:
        """Every trial's base configuration: the job's sections without the sweep's."""
        return JobConfig(**{f.name: getattr(self, f.name) for f in fields(JobConfig)})


def search_space(sweep: SweepConfig) -> dict:
    categorical = tune.grid_search if sweep.grid else tune.choice
    return {
        "groups": categorical(list(sweep.groups_choices)),
        "reverse": categorical(list(sweep.reverse_choices)),
        "shift_div": categorical(list(sweep.shift_div_choices)),
        "lr": tune.loguniform(*sweep.lr_range),
        "weight_decay": tune.loguniform(*sweep.weight_decay_range),
    }


SAMPLED = ("groups", "reverse", "shift_div", "lr", "weight_decay")
TRIAL_CPUS = 0.01  # what a trial's own driver function reserves (Tune refuses zero)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


class TrialProgress(TuneReportCallback):
    """Reports each epoch to Tune with the training job's epoch summary (epochs done, best so far, time left), the
    columns of the trial table and the time axis of ASHA (which stays right when a resumed trial skips epochs)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.best = BestSoFar()

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics and "val_map" in metrics[0]:
            summary = epoch_summary(metrics[0], self.epochs, self.best.update(metrics[0]))
            metrics = [{**metrics[0], **summary}, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


TABLE_COLUMNS = {"epochs_done": "epoch", "train_loss": "train_loss", "val_map": "val_map",
                 "best_val_map": "best", "best_epoch": "best @", "clips_per_s": "clips/s",
                 "data_wait_fraction": "data_wait", "eta": "eta"}  # fmt: skip


def run_trial(config: dict, base: JobConfig, datasets: Datasets, context: dict) -> None:
    """One Tune trial: a full training run (its own TorchTrainer and MLflow child run) with the sampled values."""
    trial_id = tune.get_context().get_trial_id()
    cfg = override(base, **{k: config[k] for k in SAMPLED}, name=trial_run_name(context["sweep_name"], trial_id))
    params = {**flat_values(cfg), "trial_id": trial_id}
    tracker = start_run(context["tracking_uri"], base.tracking.experiment, cfg.tracking.name, params,
                        parent_run_id=context["parent_run_id"])  # fmt: skip
    with finishing(tracker, tag_error=True):
        cfg.validate()
        dataclasses.replace(cfg.model, pretrained="", init_from="").build(
            datasets.train.num_classes
        )  # fails here, not per retry
        ray.data.DataContext.get_current().enable_progress_bars = False
        trainer = build_trainer(cfg, datasets, tracker, cfg.tracking.name, callbacks=[TrialProgress(cfg.optim.epochs)])
        result = trainer.fit()
        if result.error:
            raise result.error
        raise_on_bad_videos(result.metrics, cfg, datasets.root)


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
        if history is not None and "val_map" in history:  # a resumed trial may report an epoch again
            per_epoch = history.dropna(subset=["val_map"]).drop_duplicates("epoch", keep="last")["val_map"]
        else:
            per_epoch = []
        maps = list(per_epoch)
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


class SweepInterrupted(RuntimeError):
    pass


class TrialStatuses(tune.Callback):
    """Each trial's status at the end of Tune's last step: on an interruption (Ctrl-C, SIGUSR1) Tune's cleanup marks
    the unfinished trials TERMINATED, so this is where they still show as unfinished. Kept by sweep name in the
    class: a restored Tuner runs an unpickled copy of its callbacks."""

    last: dict[str, dict[str, str]] = {}

    def __init__(self, sweep_name: str) -> None:
        self.sweep_name = sweep_name

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        TrialStatuses.last[self.sweep_name] = {trial.trial_id: trial.status for trial in trials}

    def counts(self) -> tuple[int, int]:
        """(unfinished trials, all trials)."""
        last = TrialStatuses.last.get(self.sweep_name, {})
        return sum(status not in ("TERMINATED", "ERROR") for status in last.values()), len(last)


@dataclass
class SweepOutcome:
    parent_run_id: str
    table: str
    rows: list[TrialRow]
    best_trial: str
    version: str
    message: str


def best_trial_checkpoint(results, base: JobConfig):
    """The checkpoint with the highest val_map of the best trial, read back from the trial's storage."""
    best = results.get_best_result(metric="val_map", mode="max", scope="all", filter_nan_and_inf=True)
    if best is None or best.error is not None:
        raise RuntimeError("no trial finished with a validation mAP")
    fs, path = storage.pyarrow_filesystem(base.tracking.storage)
    trial_run = best.metrics["checkpoint_path"].rsplit("/", 1)[0]  # .../<run name>/epoch-NNNN
    filesystem = fs or pafs.LocalFileSystem()
    candidates = []
    for info in filesystem.get_file_info(pafs.FileSelector(trial_run)):
        if info.type == pafs.FileType.Directory and checkpoint_epoch(info.base_name) is not None:
            with filesystem.open_input_stream(f"{info.path}/{META_FILE}") as f:
                candidates.append((json.loads(f.read())["metrics"]["val_map"], info.path))
    val_map, best_path = max(candidates)
    return best, ray.train.Checkpoint(best_path, filesystem=fs) if fs else ray.train.Checkpoint(best_path)


def concurrent_trials(base: JobConfig, sweep: SweepConfig, resources: dict) -> int:
    """Trials run at once: --max-concurrent-trials, else as many as the cluster fits now; 0 (no limit) when it fits
    none yet (a KubeRay GPU group at zero replicas): Tune queues the trials and an autoscaler adds their nodes."""
    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    if base.dist.use_gpu:
        fits, need = int(resources.get("GPU", 0) // base.dist.num_workers), f"{base.dist.num_workers} GPUs"
    else:
        fits, need = int(resources.get("CPU", 0) // trial_cpus(base)), f"{trial_cpus(base):g} CPUs"
    if fits < 1:
        logger.warning("waiting for nodes: a trial needs %s, the cluster has %g CPUs and %g GPUs now; trials queue "
                       "until nodes join (--max-concurrent-trials caps them)", need, resources.get("CPU", 0),
                       resources.get("GPU", 0))  # fmt: skip
    return max(fits, 0)


def searcher(sweep: SweepConfig, seed: int):
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric="val_map", mode="max", seed=seed)
    return None  # Tune's random (or grid) variant generator


def finished_sweep(uri: str, experiment: str, sweep_name: str) -> bool:
    """A sweep of this name ran to its end (its MLflow run FINISHED, none left unfinished)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if not found:
        return False
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{sweep_name}' and "
                              "tags.`mlflow.parentRunId` IS NULL")  # fmt: skip
    return bool(runs) and all(r.info.status == "FINISHED" for r in runs)


def make_tuner(
    base: JobConfig, sweep: SweepConfig, sweep_name: str, trainable, concurrent: int, statuses: TrialStatuses
) -> tune.Tuner:
    """A new Tuner, or the interrupted sweep of the same name restored from its storage."""
    storage_fs, storage_path = storage.pyarrow_filesystem(base.tracking.storage)
    experiment_path = f"{storage_path.rstrip('/')}/{sweep_name}"
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=storage_fs):
        logger.info("resuming sweep %s from %s: finished trials are kept, unfinished ones run again", sweep_name,
                    experiment_path)  # fmt: skip
        return tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, storage_filesystem=storage_fs)
    epochs = base.optim.epochs
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep),
        tune_config=tune.TuneConfig(
            metric="val_map",
            mode="max",
            search_alg=searcher(sweep, base.optim.seed),
            num_samples=sweep.num_samples,
            max_concurrent_trials=concurrent,
            scheduler=ASHAScheduler(
                time_attr="epochs_done",
                max_t=epochs,
                grace_period=min(sweep.grace_period, epochs),
                reduction_factor=2,
            ),  # fmt: skip
        ),
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[statuses],
            progress_reporter=CLIReporter(
                metric_columns=TABLE_COLUMNS,
                parameter_columns=list(SAMPLED),
                max_report_frequency=30,
                sort_by_metric=True,
            ),  # fmt: skip
        ),  # fmt: skip
    )


def preflight_sweep(cfg: SweepJobConfig) -> Datasets:
    """The training job's checks, the sweep's flags, and a --name that is new or an unfinished sweep's."""
    datasets = preflight(cfg.base)
    cfg.validate()
    tracking = cfg.base.tracking
    if tracking.name and finished_sweep(tracking_uri(tracking.mlflow_uri), tracking.experiment, tracking.name):
        raise ValueError(f"--name {tracking.name}: that sweep already finished; give a new --name for a new sweep")
    return datasets


def run_sweep(cfg: SweepJobConfig, datasets: Datasets | None = None) -> SweepOutcome:
    base, sweep = cfg.base, cfg.sweep
    datasets = datasets or preflight_sweep(cfg)
    sweep_name = base.tracking.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking_uri(base.tracking.mlflow_uri)
    connect_ray()
    # Tune's legacy reporter, the one whose trial table takes chosen columns (the newer output picks four itself).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    params = {**flat_values(base), **{f"sweep_{k}": v for k, v in asdict(sweep).items()}}
    parent = start_run(uri, base.tracking.experiment, sweep_name, params)
    logger.info("MLflow sweep run %s in %s", parent.run_id, redact(uri))
    resources = ray.cluster_resources()
    concurrent = concurrent_trials(base, sweep, resources)
    context = {"sweep_name": sweep_name, "tracking_uri": uri, "parent_run_id": parent.run_id}
    # The trial function only drives its TorchTrainer: it reserves next to no CPU, its workers and decoders do.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, datasets=datasets, context=context), {"CPU": TRIAL_CPUS}
    )
    statuses = TrialStatuses(sweep_name)
    tuner = make_tuner(base, sweep, sweep_name, trainable, concurrent, statuses)
    epochs = base.optim.epochs
    with finishing(parent):
        results = tuner.fit()
        unfinished, trials = statuses.counts()
        if unfinished:  # stopped (Ctrl-C, SIGUSR1) before the end
            raise SweepInterrupted(f"sweep {sweep_name} interrupted with {unfinished} of {trials} trials unfinished; "
                                   f"rerun with --name {sweep_name} to resume it")  # fmt: skip
        rows = summarize(results, epochs)
        children = parent.child_runs()
        _record_trial_statuses(parent, children, sweep_name, rows)
        table = format_table(rows)
        parent.log_text(table + "\n", "sweep_summary.txt")
        parent.log_dict({"trials": [r.__dict__ for r in rows]}, "sweep_summary.json")
        best, checkpoint = best_trial_checkpoint(results, base)
        best_cfg = override(base, **{k: best.config[k] for k in SAMPLED})
        trial_tracker = _trial_tracker(parent, children, trial_run_name(sweep_name, trial_id_of(best)))
        _, version, _, message = register_checkpoint(best_cfg, trial_tracker, datasets, checkpoint)
        parent.set_tag("best_trial", trial_id_of(best))
        parent.set_tag("registered_version", f"{base.tracking.register_as}/{version}")
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


def _trial_tracker(parent: Tracker, children: dict[str, list], run_name: str) -> Tracker:
    """The MLflow child run of a trial (found by its run name), where its model is logged."""
    if not children.get(run_name):
        raise RuntimeError(f"no MLflow run named {run_name}")
    return Tracker(parent.uri, children[run_name][0].info.run_id)
