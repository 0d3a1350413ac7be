"""What the registered model is made of: its config (to rebuild the network and prepare its input), its weights and
its code, `pipeline/registry/tin_pyfunc.py` beside `tin_core`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.registry.tin_pyfunc import MODEL_CONFIG, WEIGHTS
from tin_core import ModelConfig

PYFUNC_CODE = Path(__file__).with_name("tin_pyfunc.py")
__all__ = ["MODEL_CONFIG", "PYFUNC_CODE", "WEIGHTS", "model_config"]


def model_config(
    model: ModelConfig, num_classes: int, frame_size: int, short_side: int, class_names: list[str], multi_label: bool
) -> dict:
    """What the pyfunc needs to rebuild the network and prepare its input (saved as a JSON artifact)."""
    return {
        "model": dataclasses.replace(model, pretrained="", init_from="").to_dict(),  # the weights are the model's own
        "num_classes": num_classes,
        "frame_size": frame_size,
        "short_side": short_side,
        "class_names": class_names,
        "multi_label": multi_label,
    }
