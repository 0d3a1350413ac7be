"""The registered model's code (MLflow "models from code"): an MLflow pyfunc that takes uint8 clips and returns
class probabilities.

It imports only tin_core, torch, torchvision, numpy and MLflow, so the logged model ships this file and tin_core and
nothing of the training stack. Weights are a plain state dict read with `torch.load(weights_only=True)`: loading
never unpickles Python objects (consumers may set MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).

    model = mlflow.pyfunc.load_model("models:/tin-mmit@champion")
    probs = model.predict(clips)   # clips: uint8 [N, T, H, W, 3] -> float32 [N, num_classes]
"""

from __future__ import annotations

import json

import mlflow.models
import mlflow.pyfunc
import numpy as np
import torch

from tin_core import ModelConfig
from tin_core.inputs import centre_view, normalize

WEIGHTS = "weights"
MODEL_CONFIG = "model_config"


def build_from_model_config(config: dict) -> torch.nn.Module:
    return ModelConfig(**config["model"]).build(config["num_classes"])


class ClipClassifier(mlflow.pyfunc.PythonModel):
    """uint8 clips [N, T, H, W, 3] -> probabilities [N, K] (sigmoid for multi-label, softmax otherwise).

    Frames of another size have their short side scaled to the training short side, then a centre crop of the
    training frame size, as validation saw them."""

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
        x = torch.from_numpy(np.ascontiguousarray(clips))
        size = self.config["frame_size"]
        if x.shape[2:4] != (size, size):
            x = torch.stack([centre_view(clip, self.config["short_side"], size) for clip in x])
        return x

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        return self.scores(self._prepare(model_input))

    def scores(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities of clips as they are: uint8 [N, T, H, W, 3] of any size, or already normalised float
        [N, T, 3, H, W] (the network pools globally, so full-resolution test views need no resize)."""
        x = torch.as_tensor(clips)
        if x.dtype == torch.uint8:
            x = normalize(x)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(x.to(device)).float()
        probs = torch.sigmoid(logits) if self.config["multi_label"] else torch.softmax(logits, dim=1)
        return probs.cpu().numpy().astype(np.float32)

    def retime(self, num_segments: int) -> None:
        """Score clips of another length with the same weights (TSN and TSM; TIN's OffsetNet is sized by T)."""
        if num_segments == self.config["model"]["num_segments"]:
            return
        config = {**self.config, "model": {**self.config["model"], "num_segments": num_segments}}
        model = build_from_model_config(config)
        try:
            model.load_state_dict(self.model.state_dict())
        except RuntimeError as e:
            trained = self.config["model"]["num_segments"]
            raise ValueError(
                f"this {self.config['model']['arch']} model was trained on {trained} segments and cannot score "
                f"{num_segments}: its weights depend on the clip length"
            ) from e
        self.config, self.model = config, model.eval()


mlflow.models.set_model(ClipClassifier())
