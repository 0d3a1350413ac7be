"""The training engine without a cluster: gradient accumulation, the epoch's last batch, bf16 autocast on CPU and
fp32 checkpoints (DDP and DeepSpeed with 2 workers run in test_train_job.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.config import JobConfig
from pipeline.train.engine import MODEL_FILE, DDPEngine
from pipeline.train.loop import with_last
from tin_core import ModelConfig


def tiny_engine(**overrides) -> DDPEngine:
    cfg = JobConfig().override(
        **{"arch": "tin", "num_segments": 4, "clip_grad": 0.0, "lr": 0.1, "dropout": 0.0, **overrides}
    )
    torch.manual_seed(0)
    model = ModelConfig(**{**cfg.model.to_dict(), "partial_bn": True}).build(3)  # frozen BN stats: batch-independent
    engine = DDPEngine(model, cfg, torch.device("cpu"), fc_lr5=False)
    engine.module.train()  # partial BN: BatchNorms but the first keep their statistics and take no gradient
    return engine


def loss_of(engine: DDPEngine, clips: torch.Tensor, last: bool = False) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(engine.forward(clips, last), torch.ones(len(clips), 3))


def test_with_last_marks_only_the_final_item():
    assert list(with_last([1, 2, 3])) == [(1, False), (2, False), (3, True)]
    assert list(with_last([])) == []


def test_accumulating_two_batches_equals_one_step_on_their_mean():
    clips = torch.randn(4, 4, 3, 32, 32)
    accumulating, single = tiny_engine(grad_accum=2), tiny_engine(grad_accum=1)
    reference = copy.deepcopy(single.module)
    for half in (clips[:2], clips[2:]):
        accumulating.step(loss_of(accumulating, half))
    single.optimizer.zero_grad()
    ((loss_of(single, clips[:2]) + loss_of(single, clips[2:])) / 2).backward()
    single.optimizer.step()
    changed = False
    for (name, a), b, before in zip(accumulating.module.named_parameters(), single.module.parameters(),
                                    reference.parameters(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        changed |= not torch.equal(a, before)
    assert changed, "the optimizer must have stepped"


def test_the_epochs_last_batch_ends_an_accumulation():
    engine = tiny_engine(grad_accum=4)
    before = copy.deepcopy(engine.module.state_dict())
    clips = torch.randn(2, 4, 3, 32, 32)
    engine.step(loss_of(engine, clips))
    assert torch.equal(engine.module.fc.weight, before["fc.weight"])  # still accumulating
    engine.step(loss_of(engine, clips, last=True))
    assert not torch.equal(engine.module.fc.weight, before["fc.weight"]) and engine.micro == 0
    assert all(p.grad is None for g in engine.optimizer.param_groups for p in g["params"])  # the next one starts clean


def test_bf16_on_cpu_runs_under_autocast_with_fp32_weights(tmp_path):
    engine = tiny_engine(precision="bf16")
    seen = []
    engine.module.backbone.layer1[0].conv1.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    logits = engine.forward(torch.randn(2, 4, 3, 32, 32))
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    engine.step(F.binary_cross_entropy_with_logits(logits, torch.ones(2, 3)))
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())
    assert engine.infer(torch.randn(1, 4, 3, 32, 32)).dtype == torch.float32
    engine.save(tmp_path)
    state = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_fp32_is_the_cpu_default():
    seen = []
    engine = tiny_engine()
    engine.module.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    engine.forward(torch.randn(1, 4, 3, 32, 32))
    assert seen == [torch.float32]


@pytest.mark.integration
def test_compiled_model_trains_and_keeps_the_op_one_node():
    engine = tiny_engine(compile=True)
    before = engine.module.fc.weight.detach().clone()
    engine.step(loss_of(engine, torch.randn(2, 4, 3, 32, 32)))
    assert not torch.equal(engine.module.fc.weight, before)
    assert engine.model is not engine.module  # the compiled wrapper runs, the plain module is what is saved


@pytest.fixture
def one_rank(monkeypatch):
    """torch.distributed over gloo with one rank, as Ray Train sets it up for DeepSpeed."""
    import torch.distributed as dist

    from tests.conftest import free_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.integration
def test_deepspeed_ends_an_accumulation_at_the_epochs_last_batch(one_rank):
    from pipeline.train.engine import DeepSpeedEngine

    cfg = JobConfig().override(arch="tin", num_segments=4, lr=0.1, strategy="deepspeed", grad_accum=4, zero_stage=1)
    torch.manual_seed(0)
    engine = DeepSpeedEngine(ModelConfig(**cfg.model.to_dict()).build(3), cfg, torch.device("cpu"), fc_lr5=False)
    clips = torch.randn(2, 4, 3, 32, 32)
    before = engine.module.fc.weight.detach().clone()
    engine.step(loss_of(engine, clips))
    assert torch.equal(engine.module.fc.weight, before)  # still accumulating
    engine.step(loss_of(engine, clips, last=True))
    stepped = engine.module.fc.weight.detach().clone()
    assert not torch.equal(stepped, before) and engine.micro == 0
    for _ in range(3):  # the next epoch accumulates a whole grad_accum again, counted from its first batch
        engine.step(loss_of(engine, clips))
        assert torch.equal(engine.module.fc.weight, stepped)
    engine.step(loss_of(engine, clips))
    assert not torch.equal(engine.module.fc.weight, stepped)
