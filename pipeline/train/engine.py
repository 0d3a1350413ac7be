"""Data parallelism for the train loop: DDP or DeepSpeed ZeRO behind one small interface.

    engine = make_engine(model, cfg, device, fc_lr5)
    logits = engine.model(clips)          # the wrapped model (DDP module or DeepSpeed engine)
    engine.step(loss)                     # backward, clip, optimizer step
    engine.set_lr(factor)                 # schedule: every group's lr = base lr x group multiplier x factor
    engine.save(directory) / engine.load(directory)

The model itself (tin_core) knows nothing of this. Both engines use the authors' SGD parameter groups. Checkpoints
always include `model.pt`, a plain fp32 state dict of the model written by rank 0, which registration and
evaluation read without knowing the strategy.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline.train.config import JobConfig
from tin_core import optim_param_groups

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _sgd(model: nn.Module, cfg: JobConfig, fc_lr5: bool) -> torch.optim.SGD:
    o = cfg.optim
    groups = optim_param_groups(model, o.lr, o.weight_decay, fc_lr5=fc_lr5)
    return torch.optim.SGD(groups, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)


def _set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_mult"] * factor


class DDPEngine:
    """torch DistributedDataParallel (through Ray Train's prepare_model: gloo on CPU, nccl on GPU)."""

    def __init__(self, model: nn.Module, cfg: JobConfig, device: torch.device, fc_lr5: bool) -> None:
        import ray.train.torch

        self.module = model.to(device)
        self.model = ray.train.torch.prepare_model(self.module, move_to_device=False)
        self.optimizer = _sgd(self.module, cfg, fc_lr5)
        self.cfg = cfg

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.clip_grad)
        self.optimizer.step()

    def set_lr(self, factor: float) -> None:
        _set_lr(self.optimizer, self.cfg.optim.lr, factor)

    def save(self, directory: Path) -> None:
        if _rank() == 0:
            torch.save(self.module.state_dict(), directory / MODEL_FILE)
            torch.save({"optimizer": self.optimizer.state_dict()}, directory / STATE_FILE)

    def load(self, directory: Path) -> None:
        self.module.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1 or 2 with a torch SGD optimizer: fp32 on CPU (gloo), bf16 on GPU. Every rank saves its
    optimizer partition (Ray merges the ranks' files into one checkpoint directory)."""

    TAG = "deepspeed"

    def __init__(self, model: nn.Module, cfg: JobConfig, device: torch.device, fc_lr5: bool) -> None:
        import deepspeed

        self.cfg = cfg
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.optim.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": max(cfg.optim.clip_grad, 0.0),
            "zero_optimization": {"stage": cfg.dist.zero_stage},
            "bf16": {"enabled": device.type == "cuda"},
            "zero_allow_untested_optimizer": True,  # a plain torch SGD: DeepSpeed's own optimizers need compiling
            "steps_per_print": 10**9,
        }
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model.to(device),
            optimizer=_sgd(model, cfg, fc_lr5),
            config=ds_config,
            dist_init_required=False,  # Ray Train already set up torch.distributed
        )
        self.module = self.model.module

    def step(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)
        self.model.step()

    def set_lr(self, factor: float) -> None:
        _set_lr(self.optimizer, self.cfg.optim.lr, factor)

    def save(self, directory: Path) -> None:
        self.model.save_checkpoint(str(directory), tag=self.TAG)  # collective: every rank writes its partition
        if _rank() == 0:
            state = {k: v.float() if v.is_floating_point() else v for k, v in self.module.state_dict().items()}
            torch.save(state, directory / MODEL_FILE)

    def load(self, directory: Path) -> None:
        self.model.load_checkpoint(str(directory), tag=self.TAG)


def make_engine(model: nn.Module, cfg: JobConfig, device: torch.device, fc_lr5: bool):
    if cfg.dist.strategy == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        return DeepSpeedEngine(model, cfg, device, fc_lr5)
    return DDPEngine(model, cfg, device, fc_lr5)
