"""The registered model: an MLflow pyfunc that takes uint8 clips and returns class probabilities.

Logged as "models from code" (this file is the model's code, weights are a plain state dict read with
`torch.load(weights_only=True)`), so loading it never unpickles Python objects: consumers may set
MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false.

    model = mlflow.pyfunc.load_model("models:/tin-mmit@champion")
    probs = model.predict(clips)   # clips: uint8 [N, T, H, W, 3] -> float32 [N, num_classes]
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import mlflow.pyfunc
import numpy as np
import torch

from pipeline.data.transforms import ClipTransform, normalize
from tin_core import ModelConfig

WEIGHTS = "weights"
MODEL_CONFIG = "model_config"


def model_config(
    model: ModelConfig, num_classes: int, frame_size: int, short_side: int, class_names: list[str], multi_label: bool
) -> dict:
    """What the pyfunc needs to rebuild the network and prepare its input (saved as a JSON artifact)."""
    return {
        "model": dataclasses.replace(model, pretrained="").to_dict(),  # the weights are the model's own
        "num_classes": num_classes,
        "frame_size": frame_size,
        "short_side": short_side,
        "class_names": class_names,
        "multi_label": multi_label,
    }


def build_from_model_config(config: dict) -> torch.nn.Module:
    return ModelConfig(**config["model"]).build(config["num_classes"])


# MLflow suggests type hints on predict() for its own validation; the model's tensor signature already does that.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class ClipClassifier(mlflow.pyfunc.PythonModel):
    """uint8 clips [N, T, H, W, 3] -> probabilities [N, K] (sigmoid for multi-label, softmax otherwise).

    Frames of another size are centre-cropped (after scaling the short side) to the training frame size."""

    def load_context(self, context) -> None:
        with open(context.artifacts[MODEL_CONFIG]) as f:
            self.config = json.load(f)
        self.model = build_from_model_config(self.config)
        state = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    def _prepare(self, clips: np.ndarray) -> torch.Tensor:
        clips = np.asarray(clips)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"expected uint8 clips [N, T, H, W, 3], got {clips.dtype} {clips.shape}")
        size = self.config["frame_size"]
        if clips.shape[2:4] != (size, size):
            transform = ClipTransform(size, train=False)
            clips = np.stack([transform(_resize_short_side(c, self.config["short_side"])) for c in clips])
        return normalize(torch.from_numpy(np.ascontiguousarray(clips)))

    def predict(self, context, model_input, params=None) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(self._prepare(model_input))
        probs = torch.sigmoid(logits) if self.config["multi_label"] else torch.softmax(logits, dim=1)
        return probs.numpy().astype(np.float32)


def _resize_short_side(clip: np.ndarray, short_side: int) -> np.ndarray:
    from torchvision.transforms.v2 import functional as TF

    frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)
    return TF.resize(frames, short_side, antialias=True).permute(0, 2, 3, 1).contiguous().numpy()
