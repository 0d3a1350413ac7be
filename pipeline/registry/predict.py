"""Top-k labels for videos (local paths or URIs) from a registered model.

    python jobs/predict.py --model models:/tin-mmit@champion --top-k 5 video.mp4 s3://bucket/clip.mp4

Clips are decoded as validation saw them: segment centres, the short side scaled, a centre crop.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from pipeline.data.sampling import segment_indices
from pipeline.data.transforms import ClipTransform
from pipeline.data.video import decode_clip


def load(model_uri: str):
    """The pyfunc model and its ClipClassifier (for the class names and the clip geometry it was trained with)."""
    model = mlflow.pyfunc.load_model(model_uri)
    return model, model.unwrap_python_model().config


def clip_for(uri: str, config: dict) -> np.ndarray:
    """A video as the model saw validation clips: segment centres, short side scaled, centre crop."""
    frames, _ = decode_clip(
        uri, lambda n: segment_indices(n, config["model"]["num_segments"], "val"), config["short_side"]
    )
    return ClipTransform(config["frame_size"])(frames)


def predict_top_k(model_uri: str, uris: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    model, config = load(model_uri)
    probs = model.predict(np.stack([clip_for(uri, config) for uri in uris]))
    names = config["class_names"]
    return [[(names[i], float(p[i])) for i in np.argsort(-p)[:k]] for p in probs]
