"""TSN, TSM and TIN video classifiers on torchvision ResNets.

A clip [N, T, 3, H, W] runs through a 2D ResNet frame by frame ([N*T, 3, H, W]); TSM and TIN add a temporal module
before `conv1` of every residual block. The head is dropout and a new Linear per frame, and the clip's logits are
the mean over frames (TSN's average consensus), as in the authors' code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision
from torch import nn

from tin_core.modules import (
    TSM_OFFSET_INIT,
    OffsetNet,
    TemporalInterlace,
    TemporalShift,
    TemporalThenConv,
    WeightNet,
)

ARCHS = ("tsn", "tsm", "tin")
BACKBONES: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}
# Fraction of channels moved in time: TIN interlaces C/4 (shift_div 4); TSM shifts C/8 each way (fold_div 8).
DEFAULT_SHIFT_DIV = {"tin": 4, "tsm": 8, "tsn": 4}


class VideoClassifier(nn.Module):
    """A per-frame 2D backbone, a new fc and the mean of logits over the clip's frames."""

    def __init__(
        self,
        backbone: torchvision.models.ResNet,
        num_classes: int,
        num_segments: int,
        dropout: float = 0.0,
        partial_bn: bool = False,
        fc_init_std: float = 0.0,
    ) -> None:
        super().__init__()
        feature_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.num_segments = num_segments
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(feature_dim, num_classes)
        if fc_init_std > 0:  # the authors' N(0, std) for fine-tuning; 0 keeps torch's default (uniform) init
            nn.init.normal_(self.fc.weight, 0.0, fc_init_std)
            nn.init.zeros_(self.fc.bias)
        self.partial_bn = partial_bn

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5 or clips.shape[1] != self.num_segments or clips.shape[2] != 3:
            raise ValueError(f"expected clips [N, {self.num_segments}, 3, H, W], got {tuple(clips.shape)}")
        n, t = clips.shape[:2]
        features = self.backbone(clips.flatten(0, 1))  # [N*T, D]
        logits = self.fc(self.dropout(features))  # [N*T, K]
        return logits.view(n, t, -1).mean(dim=1)  # [N, K]

    def train(self, mode: bool = True) -> VideoClassifier:
        """Partial BN (TSN): in training, every BatchNorm but the first keeps its ImageNet statistics and affine."""
        super().train(mode)
        if self.partial_bn and mode:
            for i, bn in enumerate(m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)):
                if i > 0:
                    bn.eval()
                    bn.weight.requires_grad_(False)
                    bn.bias.requires_grad_(False)
        return self


def load_state_dict(path_or_uri: str) -> dict[str, torch.Tensor]:
    """A state dict from a local path or any fsspec URI (s3://...), never from a hub.

    Accepts a bare state dict or a checkpoint holding one under "state_dict" or "model"; strips DDP's "module.".
    """
    import fsspec

    with fsspec.open(path_or_uri, "rb") as f:
        loaded = torch.load(f, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _load_pretrained_backbone(backbone: torchvision.models.ResNet, path_or_uri: str) -> None:
    state = {k: v for k, v in load_state_dict(path_or_uri).items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights {path_or_uri!r} do not fit the backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (expected a torchvision ResNet state dict)"
        )


def _insert_temporal_modules(backbone: torchvision.models.ResNet, make: Callable[[int], nn.Module]) -> None:
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in stage:
            block.conv1 = TemporalThenConv(make(block.conv1.in_channels), block.conv1)


def build_model(
    arch: str,
    num_classes: int,
    num_segments: int = 8,
    backbone: str = "resnet50",
    pretrained: str | None = None,
    dropout: float = 0.0,
    shift_div: int | None = None,
    partial_bn: bool = False,
    groups: int = 2,
    reverse: bool = True,
    offset_range: str = "code",
    fc_init_std: float = 0.0,
    offset_init: float = TSM_OFFSET_INIT,
    interlace_zero_init: bool = False,
) -> VideoClassifier:
    """Build a TSN, TSM or TIN classifier.

    arch: "tsn" (no temporal module), "tsm" (temporal shift) or "tin" (temporal interlace).
    backbone: a torchvision ResNet name (resnet18/34/50/101), randomly initialised unless `pretrained` names a
        torchvision-format state dict (local path or URI), loaded before the temporal modules are added.
    shift_div: the moved fraction of channels is 1/shift_div; None takes the authors' defaults (TIN 4, TSM 8).
    groups, reverse, offset_range, offset_init: TIN only; the authors' setting is 2 learned groups plus their
        reverses, with offsets in (-2, 2) ("code"; "paper" uses the paper's (-T/2, T/2)). The offsets start at 1
        frame, where TIN begins as TSM's shift (from scratch that learns faster); the authors start at 0.5 frames,
        fine-tuning from TSM weights. `interlace_zero_init` zeroes the last layers of OffsetNet and WeightNet, so that
        every clip starts exactly at offset_init with weights 1 (the authors: torch's random init).
    dropout, fc_init_std: the head. The defaults (no dropout, torch's default fc init) suit training from scratch; the
        authors fine-tune an ImageNet backbone with dropout 0.5-0.8 and an fc drawn from N(0, 0.001) with zero bias.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {backbone!r}")
    if num_classes < 1 or num_segments < 1:
        raise ValueError(f"num_classes and num_segments must be positive, got {num_classes}, {num_segments}")
    shift_div = shift_div or DEFAULT_SHIFT_DIV[arch]
    net = BACKBONES[backbone](weights=None)
    if pretrained:
        _load_pretrained_backbone(net, pretrained)
    if arch == "tsm":
        _insert_temporal_modules(net, lambda channels: TemporalShift(num_segments, shift_div))
    elif arch == "tin":
        _insert_temporal_modules(
            net,
            lambda channels: TemporalInterlace(
                channels, num_segments, shift_div, groups, reverse, offset_range, offset_init, interlace_zero_init
            ),
        )
    return VideoClassifier(net, num_classes, num_segments, dropout, partial_bn, fc_init_std)


@dataclass
class ModelConfig:
    """Everything that fixes a classifier's architecture and initialisation: the training job's model section, the
    registered model's saved config and the benchmarks' models are all built from one of these."""

    arch: Literal["tin", "tsm", "tsn"] = "tin"
    """tin (temporal interlace), tsm (temporal shift) or tsn (no temporal module)"""
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet18"
    """torchvision ResNet"""
    num_segments: int = 4
    """frames per clip (TSN segments; the authors use 8 or 16)"""
    pretrained: str = ""
    """torchvision-format ResNet state dict (local path or URI); empty: random init"""
    dropout: float = 0.0
    """dropout before the classifier (the authors fine-tune with 0.5-0.8; from scratch it slows learning)"""
    shift_div: int = 0
    """1/shift_div of the channels move in time; 0: the arch's default (TIN 4, TSM 8)"""
    groups: int = 2
    """TIN: learned offset groups (the authors use 2)"""
    reverse: bool = True
    """TIN: add reversed-offset groups (the authors do)"""
    offset_range: Literal["code", "paper"] = "code"
    """TIN: offsets in (-2, 2) as the authors' code, or (-T/2, T/2) as the paper's Eq. 3"""
    partial_bn: bool = False
    """freeze all BatchNorms but the first (for ImageNet-pretrained backbones)"""
    fc_init_std: float = 0.0
    """the new fc's weights start as N(0, std) (the authors' 0.001, for fine-tuning); 0: torch's default init"""
    offset_init: float = TSM_OFFSET_INIT
    """TIN: where the offsets start, in frames (1.0 starts as TSM's shift; the authors: 0.5, from TSM weights)"""
    interlace_zero_init: bool = False
    """TIN: OffsetNet's and WeightNet's last layers start at zero, so every clip starts at offset_init, weights 1"""
    init_from: str = ""
    """fine-tune from a TSN/TSM/TIN checkpoint (ours, the authors', mmaction2's; path, URI or models:/...)"""

    def build(self, num_classes: int) -> VideoClassifier:
        """The classifier, initialised from `init_from` when it names a file (models:/ URIs are resolved by the job)."""
        model = build_model(
            self.arch,
            num_classes,
            num_segments=self.num_segments,
            backbone=self.backbone,
            pretrained=self.pretrained or None,
            dropout=self.dropout,
            shift_div=self.shift_div or None,
            partial_bn=self.partial_bn,
            groups=self.groups,
            reverse=self.reverse,
            offset_range=self.offset_range,
            fc_init_std=self.fc_init_std,
            offset_init=self.offset_init,
            interlace_zero_init=self.interlace_zero_init,
        )
        if self.init_from:
            if self.init_from.startswith("models:/"):
                raise ValueError(f"init_from {self.init_from!r}: resolve a registered model to its weights file first")
            from tin_core.checkpoints import init_from

            init_from(model, self.init_from)
        return model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@torch.no_grad()
def interlace_trace(model: nn.Module, clips: torch.Tensor) -> list[dict[str, torch.Tensor | str]]:
    """Offsets [N, groups] and weights [N, T, groups] that each TIN layer learned for `clips`, in network order
    (the data of the paper's Figure 5). Only the learned groups: reverse groups mirror them."""
    records: dict[str, dict] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (OffsetNet, WeightNet)):
            layer = name.rsplit(".", 1)[0]
            key = "offsets" if isinstance(module, OffsetNet) else "weights"

            def hook(_module, _inputs, output, layer=layer, key=key):
                records.setdefault(layer, {"layer": layer})[key] = output.detach().float().cpu()

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(clips)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return list(records.values())
