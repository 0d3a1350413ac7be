"""Initialise a classifier from a TSN, TSM or TIN checkpoint: ours, the authors' (TSM's and TIN's released code) or
mmaction2's, with their keys renamed into ours.

    report = init_from(model, "tin_r50_sthv2.pth")

- ours: `backbone.` + torchvision ResNet names, the block's conv as `conv1.conv`, TIN's nets under `conv1.temporal`;
- the authors': `module.base_model.` (`conv1.net` around TSM's conv; TIN's `conv1.net1.biasnet` / `weightnet` and
  `conv1.net2`), head `module.new_fc`;
- mmaction2: `backbone.` with ConvModule names (`conv1.conv`, `conv1.bn`, `downsample.conv`), head `cls_head.fc_cls`.

The head is left at its initialisation when the checkpoint's class count differs; a TSM or TSN checkpoint leaves a
TIN's OffsetNet and WeightNet at theirs (the authors' recipe fine-tunes TIN from TSM). Anything else that does not
match raises a ValueError listing the keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from tin_core.model import load_state_dict

_AUTHORS = [
    (r"^base_model\.", "backbone."),
    (r"^new_fc\.", "fc."),
    (r"\.conv1\.net1\.biasnet\.net\.conv\.", ".conv1.temporal.offset_net.conv."),
    (r"\.conv1\.net1\.biasnet\.net\.fc\.", ".conv1.temporal.offset_net.fc1."),
    (r"\.conv1\.net1\.biasnet\.net\.lastlayer\.", ".conv1.temporal.offset_net.fc2."),
    (r"\.conv1\.net1\.weightnet\.net\.lastlayer\.", ".conv1.temporal.weight_net.conv."),
    (r"\.conv1\.net2\.", ".conv1.conv."),  # TIN's wrapped conv
    (r"\.conv1\.net\.", ".conv1.conv."),  # TSM's wrapped conv
]
_MMACTION = [
    (r"^cls_head\.fc_cls\.", "fc."),
    (r"^backbone\.conv1\.conv\.", "backbone.conv1."),
    (r"^backbone\.conv1\.bn\.", "backbone.bn1."),
    (r"\.conv1\.conv\.net1\.", ".conv1.temporal."),
    (r"\.conv1\.conv\.net2\.", ".conv1.conv."),
    (r"\.conv1\.conv\.net\.", ".conv1.conv."),
    (r"\.conv([123])\.bn\.", r".bn\1."),
    (r"\.conv([23])\.conv\.", r".conv\1."),
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample\.bn\.", ".downsample.1."),
]
_TEMPORAL_NETS = re.compile(r"\.conv1\.temporal\.")


@dataclass(frozen=True)
class InitReport:
    layout: str  # "ours", "authors" or "mmaction2"
    loaded: int  # tensors copied
    head_replaced: bool  # the class count differed: the head kept its initialisation
    kept_temporal_init: int  # TIN interlace-net tensors the checkpoint did not have (a TSM or TSN source)


def layout_of(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("base_model.") for k in state):
        return "authors"
    if any(k.startswith("cls_head.") for k in state) or any(".conv1.bn." in k for k in state):
        return "mmaction2"
    return "ours"


def to_our_keys(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, the state with our key names); checkpoint-only entries (mmaction2's `data_preprocessor`) dropped."""
    layout = layout_of(state)
    rules = {"authors": _AUTHORS, "mmaction2": _MMACTION, "ours": []}[layout]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if key.startswith(("backbone.", "fc.")):
            renamed[key] = value
    return layout, renamed


def _match_block_conv(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """A TSN checkpoint's `conv1.weight` is a TSM/TIN model's `conv1.conv.weight`, and the other way round."""
    out = {}
    for key, value in state.items():
        if key not in expected:
            wrapped, unwrapped = (
                re.sub(r"\.conv1\.weight$", ".conv1.conv.weight", key),
                key.replace(".conv1.conv.", ".conv1."),
            )
            key = wrapped if wrapped in expected else unwrapped if unwrapped in expected else key
        out[key] = value
    return out


def init_from(model: nn.Module, source: str | dict[str, torch.Tensor]) -> InitReport:
    """Copy a checkpoint's weights (path, URI or state dict) into `model` (see the module docstring)."""
    state = (
        load_state_dict(source)
        if isinstance(source, str)
        else {k.removeprefix("module."): v for k, v in source.items()}
    )
    layout, state = to_our_keys(state)
    own = model.state_dict()
    state = _match_block_conv(state, set(own))
    head_replaced = "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape
    if head_replaced:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    missing = sorted(k for k in set(own) - set(state) if not (head_replaced and k.startswith("fc.")))
    from_temporal_nets = any(_TEMPORAL_NETS.search(k) for k in state)  # else a TSM or TSN source: TIN's nets keep init
    kept = [] if from_temporal_nets else [k for k in missing if _TEMPORAL_NETS.search(k)]
    missing = [k for k in missing if k not in kept]
    if unexpected or wrong_shape or missing:
        name = source if isinstance(source, str) else "the state dict"
        raise ValueError(
            f"checkpoint {name} ({layout} layout) does not fit the model: unmatched checkpoint keys {unexpected[:8]}, "
            f"model keys it lacks {missing[:8]}, different shapes {wrong_shape[:8]}"
        )
    model.load_state_dict({**own, **state})
    return InitReport(layout, len(state), head_replaced, len(kept))
