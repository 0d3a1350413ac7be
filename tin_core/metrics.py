"""Video classification metrics, computed by scikit-learn.

The authors' MMiT score is mAP averaged over videos (`average_precision_score(..., average="samples")`); mAP over
classes is the usual per-class mean. Both skip what has no positive label (AP is undefined there).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, top_k_accuracy_score


def map_over_videos(scores: np.ndarray, targets: np.ndarray) -> float:
    """Multi-label mAP averaged over videos. scores, targets: [num_videos, num_classes]; targets multi-hot."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0
    labelled = targets.any(axis=1)
    if not labelled.any():
        return float("nan")
    return float(average_precision_score(targets[labelled], scores[labelled], average="samples"))


def map_over_classes(scores: np.ndarray, targets: np.ndarray) -> float:
    """Multi-label mAP averaged over the classes that have at least one positive video."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0
    present = targets.any(axis=0)
    if not present.any():
        return float("nan")
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Single-label top-k accuracy. scores: [num_videos, num_classes]; labels: [num_videos] class ids."""
    scores = np.asarray(scores, dtype=np.float64)
    num_classes = scores.shape[1]
    if k >= num_classes:
        return 1.0
    if num_classes == 2:  # scikit-learn reads two columns of scores as a binary task and refuses them
        return float(np.mean(scores.argmax(axis=1) == np.asarray(labels)))
    return float(top_k_accuracy_score(np.asarray(labels), scores, k=k, labels=np.arange(num_classes)))


def classification_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """All metrics for a set of videos. targets: multi-hot [V, K] or class ids [V]. Keys are the stable metric
    names the training job logs (without the split prefix)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        multi_hot = as_multi_hot(targets, scores.shape[1])
        return {
            "map": map_over_videos(scores, multi_hot),
            "map_classes": map_over_classes(scores, multi_hot),
            "top1": top_k_accuracy(scores, targets, 1),
            "top5": top_k_accuracy(scores, targets, 5),
            "mean_class_accuracy": float(balanced_accuracy_score(targets, scores.argmax(axis=1))),
        }
    return {"map": map_over_videos(scores, targets), "map_classes": map_over_classes(scores, targets)}


def as_multi_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean multi-hot [V, K] of targets given as multi-hot [V, K] or class ids [V]."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return targets > 0
    multi_hot = np.zeros((len(targets), num_classes), dtype=bool)
    multi_hot[np.arange(len(targets)), targets] = True
    return multi_hot


def ap_per_class(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """Average precision of each class (NaN for a class with no positive video). targets multi-hot [V, K] or class
    ids [V]."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = as_multi_hot(targets, scores.shape[1])
    return [
        float(average_precision_score(targets[:, k], scores[:, k])) if targets[:, k].any() else float("nan")
        for k in range(targets.shape[1])
    ]
