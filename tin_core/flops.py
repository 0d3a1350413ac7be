"""FLOPs and parameter counts of a model, measured with torch.utils.flop_counter on one forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def complexity(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """{"params", "trainable_params", "gflops"} for one forward pass of a zero input of `input_shape`.

    FLOPs count multiply-adds as 2 (torch's convention); the interlace and shift ops are elementwise and not counted.
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(input_shape, device=device))
    model.train(was_training)
    return {"params": params, "trainable_params": trainable, "gflops": counter.get_total_flops() / 1e9}


def complexity_report(models: dict[str, nn.Module], input_shape: tuple[int, ...]) -> str:
    """A small text table, one row per model."""
    lines = [f"input {list(input_shape)}", f"{'model':<24}{'params (M)':>12}{'GFLOPs':>12}"]
    for name, model in models.items():
        c = complexity(model, input_shape)
        lines.append(f"{name:<24}{c['params'] / 1e6:>12.3f}{c['gflops']:>12.2f}")
    return "\n".join(lines)
