"""tin_core: the Temporal Interlacing Network (Shao, Qian, Liu, AAAI 2020) as a plain PyTorch model library.

No Ray, MLflow or distributed code lives here; `pipeline/` wraps these pieces for training.
"""

import importlib

from tin_core.flops import complexity, complexity_report
from tin_core.model import (
    ARCHS,
    BACKBONES,
    ModelConfig,
    VideoClassifier,
    build_model,
    interlace_trace,
    load_state_dict,
)
from tin_core.modules import OffsetNet, TemporalInterlace, TemporalShift, WeightNet
from tin_core.ops import interlace_backends, temporal_interlace, temporal_interlace_reference, temporal_shift
from tin_core.optim import optim_param_groups

# The metrics load scikit-learn on first use: the registered model ships tin_core and needs only torch to run.
_METRICS = ("ap_per_class", "classification_metrics", "map_over_classes", "map_over_videos", "top_k_accuracy")


def __getattr__(name: str):
    if name in _METRICS:
        return getattr(importlib.import_module("tin_core.metrics"), name)
    raise AttributeError(f"module 'tin_core' has no attribute {name!r}")


__all__ = [
    "ARCHS",
    "BACKBONES",
    "ModelConfig",
    "OffsetNet",
    "TemporalInterlace",
    "TemporalShift",
    "VideoClassifier",
    "WeightNet",
    "ap_per_class",
    "build_model",
    "classification_metrics",
    "complexity",
    "complexity_report",
    "interlace_backends",
    "interlace_trace",
    "load_state_dict",
    "map_over_classes",
    "map_over_videos",
    "optim_param_groups",
    "temporal_interlace",
    "temporal_interlace_reference",
    "temporal_shift",
    "top_k_accuracy",
]
