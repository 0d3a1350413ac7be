"""The training job's configuration: plain dataclasses in sections (data, model, optim, dist, tracking), a line of doc
per field, read from the command line by tyro (one flag per field, `--field-name`, grouped by section) over an
optional YAML file (flags win over the file, the file over the defaults).

    cfg = parse_cli(JobConfig, sys.argv[1:], __doc__)       # --config FILE.yaml, --print-config, every field's flag
    cfg = JobConfig().override(epochs=3, arch="tsm")       # the same fields from Python

The resolved config is logged to MLflow (flat, one param per field) and saved whole in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import tyro
import yaml

from pipeline.data.storage import DEFAULT_CACHE
from tin_core import ModelConfig


@dataclass
class DataConfig:
    root: Annotated[str, tyro.conf.arg(name="data")] = ""
    """dataset root in MMiT layout or a frame-shard dataset (jobs/prepare_mmit.py), local or s3://; empty: the
    generated default"""
    format: Literal["mmit", "kinetics", "sthv1", "sthv2", "jester", "ucf101", "hmdb51", "list"] = "mmit"
    """the dataset's annotation layout under --data (pipeline/data/layouts.py)"""
    frame_size: int = 32
    """crop size in pixels; frames are resized to a short side of frame_size * 8/7"""
    flip: bool = False
    """random horizontal flips in training (never for direction-sensitive classes)"""
    crop_scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    """training crop sides as fractions of the short side (TSM's multi-scale crop; 0.875 alone: position only)"""
    max_bad_fraction: float = 0.05
    """stop when more than this fraction of videos fails to decode"""
    decoders: int = 2
    """the most Ray Data decode tasks at once: they start as CPUs free up, so a cluster that grows gets more of them"""
    cpus_per_decoder: float = 0.5
    """CPUs each decode task reserves (0.5: two decoders beside a training worker on 2 CPUs; clusters: 1)"""
    preserve_order: bool = True
    """decoded clips reach training in their seeded order, so a run on one training worker repeats exactly (resumed
    or not); off: a slow video never holds up the clips decoded behind it"""
    num_train: int = 320
    """generated default data: training clips"""
    num_val: int = 96
    """generated default data: validation clips"""

    @property
    def short_side(self) -> int:
        return round(self.frame_size * 8 / 7)  # 256 -> 224 in the authors' setting


@dataclass
class OptimConfig:
    epochs: int = 10
    """training epochs"""
    batch_size: int = 8
    """clips per worker per step"""
    lr: float = 0.02
    """base learning rate (SGD, momentum 0.9)"""
    weight_decay: float = 5e-4
    """weight decay"""
    lr_schedule: Literal["cosine", "step"] = "cosine"
    """cosine (after linear warmup) or step"""
    lr_steps: tuple[int, ...] = (20, 40)
    """epochs where the step schedule divides the lr by 10"""
    warmup_epochs: float = 1.0
    """linear warmup length in epochs"""
    warmup_start: float = 0.1
    """the lr at the warmup's start, as a fraction of --lr (0.1 as the authors)"""
    clip_grad: float = 20.0
    """gradient-norm clipping (the authors use 20); 0: none"""
    interlace_lr_mult: float = 100.0
    """TIN: lr multiplier of the OffsetNet and WeightNet: their offsets are frames, moved by tiny gradients, and at x1
    barely move in a short run from scratch (the authors: 1, over long fine-tuning)"""
    seed: int = 0
    """random seed of model initialisation, data order and augmentation, and the generated data"""


@dataclass
class DistConfig:
    num_workers: int = 1
    """Ray Train workers (one small machine: one worker with 2 threads is fastest)"""
    use_gpu: bool = False
    """one GPU per worker (nccl); otherwise CPU workers (gloo)"""
    cpus_per_worker: float = 1.0
    """CPUs reserved per training worker (the rest decode data)"""
    threads_per_worker: int = 0
    """torch threads per training worker; 0: Ray's default (its CPU count)"""
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    """data parallelism: torch DDP or DeepSpeed ZeRO"""
    zero_stage: Literal[1, 2] = 2
    """DeepSpeed ZeRO stage"""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """bf16 (autocast, fp32 weights) or fp32; auto: bf16 on GPU, fp32 on CPU"""
    grad_accum: int = 1
    """batches per optimizer step (the effective batch is batch_size x grad_accum x num_workers)"""
    compile: bool = False
    """torch.compile the model (the interlace op stays one graph node)"""
    max_failures: int = 2
    """worker-group restarts from the last checkpoint before the job fails"""


@dataclass
class TrackingConfig:
    storage: str = str(DEFAULT_CACHE / "runs")
    """checkpoint storage (local path or s3://...)"""
    name: str = ""
    """run name; rerunning with the same name resumes from its last checkpoint"""
    mlflow_uri: str = ""
    """MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else a local sqlite file"""
    experiment: str = "tin-mmit"
    """MLflow experiment"""
    register_as: str = "tin-mmit"
    """MLflow registered model name"""
    log_every_steps: int = 50
    """rank 0 prints loss and clips/s every this many steps (0: only the per-epoch line)"""


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        """Refuse bad values before any Ray work starts, naming the flag."""
        check_choices(self)
        d, m, o, w = self.data, self.model, self.optim, self.dist
        checks = [
            (m.num_segments >= 1, "num_segments", ">= 1"),
            (d.frame_size >= 16, "frame_size", ">= 16"),
            (o.epochs >= 1, "epochs", ">= 1"),
            (o.batch_size >= 1, "batch_size", ">= 1"),
            (w.num_workers >= 1, "num_workers", ">= 1"),
            (o.lr > 0, "lr", "> 0"),
            (o.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= d.max_bad_fraction <= 1, "max_bad_fraction", "in [0, 1]"),
            (d.decoders >= 1, "decoders", ">= 1"),
            (d.cpus_per_decoder > 0, "cpus_per_decoder", "> 0"),
            (w.grad_accum >= 1, "grad_accum", ">= 1"),
            (m.groups >= 1, "groups", ">= 1"),
            (m.shift_div >= 0, "shift_div", ">= 0"),
            (0 <= m.dropout < 1, "dropout", "in [0, 1)"),
            (m.fc_init_std >= 0, "fc_init_std", ">= 0"),
            (bool(d.crop_scales) and all(0 < s <= 1 for s in d.crop_scales), "crop_scales", "in (0, 1]"),
            (0 <= o.warmup_start <= 1, "warmup_start", "in [0, 1]"),
            (o.interlace_lr_mult > 0, "interlace_lr_mult", "> 0"),
            (self.tracking.log_every_steps >= 0, "log_every_steps", ">= 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"{flag(name)} must be {expected}, got {flat_values(self)[name]!r}")

    def to_dict(self) -> dict:
        return to_dict(self)

    def override(self, **values) -> JobConfig:
        return override(self, **values)


C = TypeVar("C")


def sections(cfg) -> dict[str, object]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def flat_values(cfg) -> dict:
    """Every field of every section by its own name (names are unique across sections)."""
    return {k: v for section in sections(cfg).values() for k, v in to_dict(section).items()}


def to_dict(cfg) -> dict:
    """Nested plain dict (tuples as lists), as YAML and JSON write it."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def flag(name: str) -> str:
    return "--" + {"root": "data"}.get(name, name).replace("_", "-")


def _section_of(cfg, name: str) -> str:
    for section, value in sections(cfg).items():
        if name in {f.name for f in dataclasses.fields(value)}:
            return section
    raise ValueError(f"unknown config key {name!r}")


def override(cfg: C, **values) -> C:
    """A copy of `cfg` with fields set by their flat names, e.g. override(cfg, lr=0.1, arch="tsm")."""
    by_section: dict[str, dict] = {}
    for name, value in values.items():
        by_section.setdefault(_section_of(cfg, name), {})[name] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **v) for s, v in by_section.items()})


def _coerce(cls, name: str, value):
    hint = typing.get_type_hints(cls)[name]
    hint = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    return tuple(value) if typing.get_origin(hint) is tuple and isinstance(value, list) else value


def from_dict(cls: type[C], mapping: dict, source: str = "config") -> C:
    """An instance from a nested mapping ({section: {field: value}}) or flat keys (field: value), or both."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    nested: dict[str, dict] = {}
    for key, value in mapping.items():
        key = key.replace("-", "_")
        if key in names and isinstance(value, dict):
            nested.setdefault(key, {}).update({k.replace("-", "_"): v for k, v in value.items()})
            continue
        key = "root" if key == "data" else key  # the flat key of the dataset root is its flag's name
        try:
            nested.setdefault(_section_of(cls(), key), {})[key] = value
        except ValueError:
            raise ValueError(f"{source}: unknown key {key!r}") from None
    built = {}
    for section, values in nested.items():
        section_cls = typing.get_type_hints(cls)[section]
        known = {f.name for f in dataclasses.fields(section_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown} in section {section!r}")
        built[section] = section_cls(**{k: _coerce(section_cls, k, v) for k, v in values.items()})
    return cls(**built)


def check_choices(cfg) -> None:
    """Every Literal-typed field holds one of its choices (the CLI checks this itself; YAML and Python do not)."""
    for section in sections(cfg).values():
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else None
            value = getattr(section, f.name)
            if choices and value not in choices:
                raise ValueError(f"{flag(f.name)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def load_yaml(cls: type[C], path: str) -> C:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file")
    loaded = yaml.safe_load(file.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path}: expected a mapping of keys to values")
    return from_dict(cls, loaded, f"--config {path}")


def usage_error(error: Exception) -> typing.NoReturn:
    """Exit as argparse does for a bad command line: the message on stderr, status 2."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)


def parse_cli(cls: type[C], argv: list[str] | None, description: str) -> C:
    """Parse flags over `--config FILE` (if given) over the defaults; `--print-config` prints the result as YAML that
    --config accepts, and exits. Bad values exit with a message naming the flag."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    config_file = pre.parse_known_args(argv)[0].config
    try:
        default = load_yaml(cls, config_file) if config_file else cls()
        default.validate()  # a bad file is refused as such, even where a flag would override the bad value
    except ValueError as e:
        usage_error(e)
    config_help = "YAML file of any fields, nested by section or flat; flags win over it"
    print_help = "print the resolved config as YAML and exit"
    command = dataclasses.make_dataclass(
        "Command",
        [
            ("job", Annotated[cls, tyro.conf.arg(name="")], field(default_factory=lambda: default)),
            ("config", Annotated[str, tyro.conf.arg(help=config_help)], field(default="")),
            ("print_config", Annotated[bool, tyro.conf.FlagCreatePairsOff, tyro.conf.arg(help=print_help)], False),
        ],
    )
    parsed = tyro.cli(command, args=argv, description=description, config=(tyro.conf.OmitArgPrefixes,))
    try:
        parsed.job.validate()
    except ValueError as e:
        usage_error(e)
    if parsed.print_config:
        print(yaml.safe_dump(to_dict(parsed.job), sort_keys=False), end="")
        raise SystemExit(0)
    return parsed.job
