"""The authors' optimiser parameter groups (TSN/TSM/TIN `get_optim_policies`).

Multipliers apply to the base learning rate and weight decay:
- the first conv's weight x1 (bias: lr x2, no decay);
- every other conv and linear weight x1, their biases lr x2 and no decay (TIN's OffsetNet/WeightNet included, as the
  authors' "cs" groups, which have the same multipliers);
- BatchNorm scale and shift: no decay; under partial BN only the first BN is trained;
- the new fc: weight lr x5 and bias lr x10 when fine-tuning from ImageNet weights (`fc_lr5`), else x1 / x2;
- `interlace_lr_mult` scales the lr of TIN's OffsetNet and WeightNet (1: the authors' setting).
"""

from __future__ import annotations

from torch import nn

from tin_core.model import VideoClassifier
from tin_core.modules import OffsetNet, WeightNet

# name: (lr multiplier, weight-decay multiplier)
GROUP_MULTIPLIERS: dict[str, tuple[float, float]] = {
    "first_conv_weight": (1, 1),
    "first_conv_bias": (2, 0),
    "normal_weight": (1, 1),
    "normal_bias": (2, 0),
    "bn": (1, 0),
    "lr5_weight": (5, 1),
    "lr10_bias": (10, 0),
}


def optim_param_groups(
    model: VideoClassifier, lr: float, weight_decay: float, fc_lr5: bool = False, interlace_lr_mult: float = 1.0
) -> list[dict]:
    """Parameter groups for a torch optimizer. Each group carries its `name`, `lr_mult` and `decay_mult`, and its
    `lr` and `weight_decay` already multiplied, so schedulers that scale `lr` should scale from `initial_lr`."""
    # With a multiplier, TIN's nets get groups of their own ("<group>_interlace"); at 1 they stay in the authors'.
    nets = (OffsetNet, WeightNet)
    interlace = (
        {id(p) for m in model.modules() if isinstance(m, nets) for p in m.parameters()}
        if interlace_lr_mult != 1
        else set()
    )
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_MULTIPLIERS}
    convs = 0
    bns = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            convs += 1
            prefix = "first_conv" if convs == 1 else "normal"
            groups[f"{prefix}_weight"].append(module.weight)
            if module.bias is not None:
                groups[f"{prefix}_bias"].append(module.bias)
        elif isinstance(module, nn.Linear):
            is_head = module is model.fc
            groups["lr5_weight" if is_head and fc_lr5 else "normal_weight"].append(module.weight)
            if module.bias is not None:
                groups["lr10_bias" if is_head and fc_lr5 else "normal_bias"].append(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            bns += 1
            if not model.partial_bn or bns == 1:
                groups["bn"].extend(params)
        else:
            raise ValueError(f"no optimiser policy for {type(module).__name__}: add one to tin_core.optim")
    out = []
    for name, params in groups.items():
        for suffix, mult, members in (
            ("", 1.0, [p for p in params if id(p) not in interlace]),
            ("_interlace", interlace_lr_mult, [p for p in params if id(p) in interlace]),
        ):
            if members:
                lr_mult, decay_mult = GROUP_MULTIPLIERS[name][0] * mult, GROUP_MULTIPLIERS[name][1]
                out.append({"params": members, "name": name + suffix, "lr_mult": lr_mult, "decay_mult": decay_mult,
                            "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult})  # fmt: skip
    return out
