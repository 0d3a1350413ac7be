"""Figures of what TIN learned, as in the paper's Figure 5: offsets per layer and group, weights per frame."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _short(layer: str) -> str:
    return layer.removeprefix("backbone.").removesuffix(".conv1.temporal")


def plot_offsets(trace: list[dict], start: float | None = None) -> plt.Figure:
    """Mean learned offset of each group at each TIN layer (x: layer in network order), beside where the offsets
    started (`start`, the model's offset_init) so that what training moved shows."""
    layers = [_short(t["layer"]) for t in trace]
    offsets = np.stack([t["offsets"].mean(dim=0).numpy() for t in trace])  # [layers, groups]
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.45), 3.5))
    for g in range(offsets.shape[1]):
        ax.plot(range(len(layers)), offsets[:, g], marker="o", label=f"group {g} (reverse: -)")
    ax.axhline(0, color="grey", lw=0.5)
    if start is not None:
        ax.axhline(start, color="black", ls="--", lw=1, label=f"start ({start:g})")
    ax.set_xticks(range(len(layers)), layers, rotation=60, fontsize=7)
    ax.set(xlabel="layer", ylabel="offset (frames)", title="Learned offsets per layer and group")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_weights(trace: list[dict]) -> plt.Figure:
    """Mean learned weight per frame at each TIN layer, one panel per group (rows: layers, columns: frames)."""
    weights = np.stack([t["weights"].mean(dim=0).numpy() for t in trace])  # [layers, T, groups]
    groups = weights.shape[2]
    fig, axes = plt.subplots(1, groups, figsize=(4 * groups, 0.3 * len(trace) + 1.5), squeeze=False)
    for g, ax in enumerate(axes[0]):
        image = ax.imshow(weights[:, :, g], aspect="auto", cmap="viridis", vmin=0, vmax=2)
        ax.set(xlabel="frame", title=f"group {g} weights")
        ax.set_yticks(range(len(trace)), [_short(t["layer"]) for t in trace], fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist())
    return fig


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> plt.Figure:
    """Row-normalised confusion matrix of single-label predictions (class names on the axes up to 40 classes)."""
    from sklearn.metrics import confusion_matrix

    return plot_confusion_counts(confusion_matrix(labels, predicted, labels=np.arange(len(class_names))), class_names)


def plot_confusion_counts(counts: np.ndarray, class_names: list[str]) -> plt.Figure:
    """Row-normalised confusion matrix from its counts [true, predicted] (rows of absent classes stay empty)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(counts, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    side = min(4 + 0.3 * k, 40)
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay(rates, display_labels=class_names if k <= 40 else None).plot(
        include_values=k <= 20, values_format=".2f", cmap="Blues", ax=ax, colorbar=k <= 40
    )
    ax.set_title("Confusion matrix (rows: true class, normalised)")
    if k <= 40:
        ax.tick_params(axis="x", labelrotation=90)
    fig.tight_layout()
    return fig
