"""Top-k labels for a few videos (local paths or URIs) from a registered model, in batches, in this process.

    python jobs/predict.py --model models:/tin-mmit@champion --top-k 5 video.mp4 s3://bucket/clip.mp4

Clips are the validation view (pipeline.data.views, as batch prediction and evaluation cut them).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.data.dataset import decode_or_skip
from pipeline.data.views import ViewSpec, video_views
from pipeline.registry.scoring import load_classifier, reason


def predict_top_k(
    model_uri: str, uris: list[str], k: int = 5, batch_size: int = 8
) -> Iterator[tuple[str, list[tuple[str, float]], str | None]]:
    """(uri, [(label, probability)] * k, None), or (uri, [], reason) for a video that cannot be decoded."""
    classifier = load_classifier(model_uri)
    spec = ViewSpec.of_model(classifier.config)
    names = classifier.config["class_names"]
    for start in range(0, len(uris), batch_size):
        chunk = uris[start : start + batch_size]
        decoded = [decode_or_skip(uri, lambda uri=uri: video_views(uri, spec)[0], spec.shape[1:]) for uri in chunk]
        good = [i for i, (_, status) in enumerate(decoded) if status == 0]
        probs = classifier.scores(np.stack([decoded[i][0] for i in good])) if good else []
        by_row = dict(zip(good, probs, strict=True))
        for i, uri in enumerate(chunk):
            if i in by_row:
                p = by_row[i]
                yield uri, [(names[j], float(p[j])) for j in np.argsort(-p)[:k]], None
            else:
                yield uri, [], reason(decoded[i][1])
