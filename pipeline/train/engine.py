"""Data parallelism for the train loop: DDP or DeepSpeed ZeRO behind one small interface.

    engine = make_engine(model, cfg, device, fc_lr5)
    logits = engine.forward(clips, last)  # float32 logits; last: the epoch's last batch (ends an accumulation)
    engine.step(loss)                     # backward; every --grad-accum batches: clip, optimizer step
    logits = engine.infer(clips)          # evaluation: no grad, same precision
    engine.set_lr(factor)                 # schedule: every group's lr = base lr x group multiplier x factor
    engine.save(directory) / engine.load(directory)

The model itself (tin_core) knows nothing of this. Both engines use the authors' SGD parameter groups and train in
bf16 under autocast (fp32 weights and optimizer state) or in fp32 (--precision); on GPU the DDP engine's model
runs channels_last (DeepSpeed's ZeRO keeps weights in flat channels-first buffers), and --compile compiles it.
Checkpoints always include `model.pt`, a plain fp32 state dict of the model written by rank 0, which registration
and evaluation read without knowing the strategy.
"""

from __future__ import annotations

import contextlib
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


def use_bf16(cfg: JobConfig, device: torch.device) -> bool:
    """--precision auto: bf16 on GPU (no grad scaler needed), fp32 on CPU."""
    return cfg.dist.precision == "bf16" or (cfg.dist.precision == "auto" and device.type == "cuda")


def _sgd(model: nn.Module, cfg: JobConfig, fc_lr5: bool) -> torch.optim.SGD:
    o = cfg.optim
    groups = optim_param_groups(model, o.lr, o.weight_decay, fc_lr5=fc_lr5, interlace_lr_mult=o.interlace_lr_mult)
    return torch.optim.SGD(groups, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)


def _set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_mult"] * factor


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def _fp32_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DDPEngine:
    """torch DistributedDataParallel over the process group Ray Train set up (gloo on CPU, nccl on GPU; one process:
    no wrapper), torch.autocast for bf16, and gradient accumulation that all-reduces only on an accumulation's last
    batch (DDP no_sync)."""

    def __init__(self, model: nn.Module, cfg: JobConfig, device: torch.device, fc_lr5: bool) -> None:
        self.module = _prepare(model, device)
        self.ddp = None
        if _world_size() > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device] if device.type == "cuda" else None
            )
        wrapped = self.ddp or self.module
        self.model = torch.compile(wrapped) if cfg.dist.compile else wrapped
        self.optimizer = _sgd(self.module, cfg, fc_lr5)
        self.cfg = cfg
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))
        self.micro = 0  # batches since the last optimizer step
        self._pending = contextlib.ExitStack()

    def forward(self, clips: torch.Tensor, last: bool = False) -> torch.Tensor:
        self._sync = last or (self.micro + 1) % self.cfg.dist.grad_accum == 0
        if self.ddp is not None and not self._sync:  # open until step(): forward and backward both skip the all-reduce
            self._pending.enter_context(self.ddp.no_sync())
        with torch.autocast(**self.autocast):
            return self.model(clips).float()

    def step(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.dist.grad_accum).backward()
        self._pending.close()
        self.micro += 1
        if not self._sync:
            return
        if self.cfg.optim.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro = 0

    @torch.no_grad()
    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        with torch.autocast(**self.autocast):
            return self.module(clips).float()

    def set_lr(self, factor: float) -> None:
        _set_lr(self.optimizer, self.cfg.optim.lr, factor)

    def save(self, directory: Path) -> None:
        if _rank() == 0:
            torch.save(_fp32_state(self.module), directory / MODEL_FILE)
            torch.save({"optimizer": self.optimizer.state_dict()}, directory / STATE_FILE)

    def load(self, directory: Path) -> None:
        self.module.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1 or 2 with a torch SGD optimizer; bf16 through DeepSpeed's own torch_autocast section
    (fp32 weights and optimizer state, bf16 gradients communicated for conv and linear layers), gradient
    accumulation through its gradient_accumulation_steps. Every rank saves its optimizer partition (Ray merges the
    ranks' files into one checkpoint directory)."""

    TAG = "deepspeed"

    def __init__(self, model: nn.Module, cfg: JobConfig, device: torch.device, fc_lr5: bool) -> None:
        import deepspeed

        self.cfg = cfg
        bf16 = use_bf16(cfg, device)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.optim.batch_size,
            "gradient_accumulation_steps": cfg.dist.grad_accum,
            "gradient_clipping": max(cfg.optim.clip_grad, 0.0),
            "zero_optimization": {"stage": cfg.dist.zero_stage},
            "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
            "zero_allow_untested_optimizer": True,  # a plain torch SGD: DeepSpeed's own optimizers need compiling
            "steps_per_print": 10**9,
        }
        model = _prepare(model, device)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=_sgd(model, cfg, fc_lr5),
            config=ds_config,
            dist_init_required=False,  # Ray Train already set up torch.distributed
        )
        if cfg.dist.compile:
            self.model.compile()
        self.module = self.model.module
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
        self.micro = 0  # batches since the last optimizer step

    def forward(self, clips: torch.Tensor, last: bool = False) -> torch.Tensor:
        # The boundary is ours to set: an epoch's last batch ends an accumulation, so none runs into the next epoch
        # (DeepSpeed's own micro-step count would carry it over, and past the epoch's checkpoint).
        self._sync = last or (self.micro + 1) % self.cfg.dist.grad_accum == 0
        self.model.set_gradient_accumulation_boundary(self._sync)
        return self.model(clips).float()  # DeepSpeed autocasts inside its forward

    def step(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # scaled by 1 / gradient_accumulation_steps inside
        self.model.step()  # an optimizer step only at accumulation boundaries
        self.micro = 0 if self._sync else self.micro + 1

    @torch.no_grad()
    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        with torch.autocast(**self.autocast):
            return self.module(clips).float()

    def set_lr(self, factor: float) -> None:
        _set_lr(self.optimizer, self.cfg.optim.lr, factor)

    def save(self, directory: Path) -> None:
        self.model.save_checkpoint(str(directory), tag=self.TAG)  # collective: every rank writes its partition
        if _rank() == 0:
            torch.save(_fp32_state(self.module), directory / MODEL_FILE)

    def load(self, directory: Path) -> None:
        self.model.load_checkpoint(str(directory), tag=self.TAG)


def make_engine(model: nn.Module, cfg: JobConfig, device: torch.device, fc_lr5: bool):
    if cfg.dist.strategy == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        return DeepSpeedEngine(model, cfg, device, fc_lr5)
    return DDPEngine(model, cfg, device, fc_lr5)
