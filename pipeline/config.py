"""The training job's configuration: one dataclass, one line of help per field, overridable from a YAML file and
from the command line (flags win over the file, the file over the defaults).

The whole resolved config is logged to MLflow and saved in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("TIN_CACHE_DIR", Path.home() / ".cache" / "tin"))


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    # data
    data: str = _help(
        "dataset root in MMiT layout (local path or s3://bucket/prefix); empty: the generated default", default=""
    )
    num_segments: int = _help("frames per clip (TSN segments; the authors use 8 or 16)", default=4)
    frame_size: int = _help("crop size in pixels; frames are resized to a short side of frame_size * 8/7", default=32)
    flip: bool = _help("random horizontal flips in training (never for direction-sensitive classes)", default=False)
    max_bad_fraction: float = _help("stop when more than this fraction of videos fails to decode", default=0.05)
    decoders: int = _help("Ray Data decoding actors", default=2)
    # model
    arch: str = _help("tin, tsm or tsn", default="tin")
    backbone: str = _help("torchvision ResNet: resnet18, resnet34, resnet50 or resnet101", default="resnet18")
    pretrained: str = _help("torchvision-format ResNet state dict (local path or URI); empty: random init", default="")
    dropout: float = _help("dropout before the classifier", default=0.5)
    shift_div: int = _help("1/shift_div of the channels move in time; 0: the arch's default (TIN 4, TSM 8)", default=0)
    groups: int = _help("TIN: learned offset groups (the authors use 2)", default=2)
    reverse: bool = _help("TIN: add reversed-offset groups (the authors do)", default=True)
    partial_bn: bool = _help("freeze all BatchNorms but the first (for ImageNet-pretrained backbones)", default=False)
    # optimisation
    epochs: int = _help("training epochs", default=10)
    batch_size: int = _help("clips per worker per step", default=8)
    lr: float = _help("base learning rate (SGD, momentum 0.9)", default=0.02)
    weight_decay: float = _help("weight decay", default=5e-4)
    lr_schedule: str = _help("cosine (after linear warmup) or step", default="cosine")
    lr_steps: tuple[int, ...] = _help("epochs where the step schedule divides the lr by 10", default=(20, 40))
    warmup_epochs: float = _help("linear warmup length in epochs", default=1.0)
    clip_grad: float = _help("gradient-norm clipping (the authors use 20)", default=20.0)
    seed: int = _help("random seed of model initialisation and data generation", default=0)
    # distribution
    num_workers: int = _help("Ray Train workers (one small machine: one worker with 2 threads is fastest)", default=1)
    use_gpu: bool = _help("one GPU per worker (nccl); otherwise CPU workers (gloo)", default=False)
    cpus_per_worker: float = _help("CPUs reserved per training worker (the rest decode data)", default=1.0)
    threads_per_worker: int = _help("torch threads per training worker; 0: Ray's default (its CPU count)", default=0)
    strategy: str = _help("ddp or deepspeed", default="ddp")
    zero_stage: int = _help("DeepSpeed ZeRO stage (1 or 2)", default=2)
    max_failures: int = _help("worker-group restarts from the last checkpoint before the job fails", default=2)
    # bookkeeping
    storage: str = _help("checkpoint storage (local path or s3://...)", default=str(DEFAULT_CACHE / "runs"))
    name: str = _help("run name; rerunning with the same name resumes from its last checkpoint", default="")
    mlflow_uri: str = _help("MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else a local sqlite file", default="")
    experiment: str = _help("MLflow experiment", default="tin-mmit")
    register_as: str = _help("MLflow registered model name", default="tin-mmit")
    num_train: int = _help("generated default data: training clips", default=320)
    num_val: int = _help("generated default data: validation clips", default=96)

    @property
    def short_side(self) -> int:
        return round(self.frame_size * 8 / 7)  # 256 -> 224 in the authors' setting

    def validate(self) -> None:
        """Refuse bad values before any Ray work starts, naming the field."""
        checks = [
            (self.arch in ("tin", "tsm", "tsn"), "arch", "tin, tsm or tsn"),
            (self.backbone in ("resnet18", "resnet34", "resnet50", "resnet101"), "backbone", "a torchvision ResNet"),
            (self.strategy in ("ddp", "deepspeed"), "strategy", "ddp or deepspeed"),
            (self.zero_stage in (1, 2), "zero_stage", "1 or 2"),
            (self.lr_schedule in ("cosine", "step"), "lr_schedule", "cosine or step"),
            (self.num_segments >= 1, "num_segments", ">= 1"),
            (self.frame_size >= 16, "frame_size", ">= 16"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.num_workers >= 1, "num_workers", ">= 1"),
            (self.lr > 0, "lr", "> 0"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.max_bad_fraction <= 1, "max_bad_fraction", "in [0, 1]"),
            (self.groups >= 1, "groups", ">= 1"),
            (self.shift_div >= 0, "shift_div", ">= 0"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_TUPLE_TYPES = {"tuple[int, ...]": int, "tuple[float, ...]": float, "tuple[str, ...]": str}


def add_config_arguments(parser, cls=TrainConfig, with_config_file: bool = True) -> None:
    """One flag per field (kebab-case), with the field's help; booleans also get --no-FLAG."""
    if with_config_file:
        parser.add_argument("--config", help="YAML file with any of these keys (flags win over it)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind in _TUPLE_TYPES:
            parser.add_argument(flag, dest=f.name, type=_TUPLE_TYPES[kind], nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type={"int": int, "float": float, "str": str}[kind], default=None,
                                help=help_text)  # fmt: skip


def config_from_args(args: argparse.Namespace, cls=TrainConfig, ignore=None, use_config_file: bool = True):
    """Defaults, then the YAML file, then the flags given on the command line. `ignore`: a dataclass whose flags
    share the parser (a sweep's) and are not this config's."""
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    if use_config_file and getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config {args.config}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of keys to values")
        loaded = {k.replace("-", "_"): v for k, v in loaded.items()}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"--config {args.config}: unknown keys {unknown}")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    for f in dataclasses.fields(cls):
        if f.name in values and (f.type if isinstance(f.type, str) else "") in _TUPLE_TYPES:
            values[f.name] = tuple(values[f.name])
    config = cls(**values)
    config.validate()
    return config
