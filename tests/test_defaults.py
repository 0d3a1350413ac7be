"""The job's defaults for training from scratch, each with the reason it was chosen (the measurements behind them:
the ablation table of the temporal benchmark in benchmarks/RESULTS.md), and the authors' fine-tuning recipe kept
in jobs/configs/mmit_tin_r50.yaml."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.config import JobConfig, parse_cli
from pipeline.train.loop import lr_factor
from tin_core import ModelConfig, build_model, interlace_trace

AUTHORS = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "mmit_tin_r50.yaml"


def test_head_has_no_dropout_by_default():
    # Dropout before the fc regularises fine-tuning; from scratch it slows learning (the ablations in RESULTS.md).
    assert ModelConfig().dropout == 0.0 and JobConfig().model.dropout == 0.0


def test_fc_starts_with_torch_default_init():
    # N(0, 0.001) suits a pretrained backbone; from scratch it starves the backbone's gradient (test below).
    assert ModelConfig().fc_init_std == 0.0


def backbone_grad_norm(fc_init_std: float) -> float:
    torch.manual_seed(0)
    model = build_model("tin", 6, num_segments=4, backbone="resnet18", fc_init_std=fc_init_std)
    clips, targets = torch.randn(2, 4, 3, 32, 32), torch.randint(0, 2, (2, 6)).float()
    F.binary_cross_entropy_with_logits(model(clips), targets).backward()
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None]).norm().item()


def test_a_small_fc_init_starves_a_random_backbone():
    # Every gradient reaching the backbone passes through the fc's weights: drawn from N(0, 0.001) they are far
    # smaller than torch's default init (bound 1/sqrt(features)), and so is what the backbone learns from at first.
    assert backbone_grad_norm(0.0) > 10 * backbone_grad_norm(0.001)


def test_warmup_starts_at_a_tenth_of_the_lr():
    # The authors warm up from lr/10; from 0 the first steps of a short from-scratch run are wasted.
    cfg = JobConfig()
    assert lr_factor(cfg, 0.0) == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(cfg, cfg.optim.warmup_epochs) == pytest.approx(1.0)


def test_authors_fine_tuning_recipe_stays_in_its_config():
    cfg = parse_cli(JobConfig, ["--config", str(AUTHORS)], "")
    assert (cfg.model.dropout, cfg.model.fc_init_std, cfg.model.offset_init) == (0.8, 0.001, 0.5)
    assert cfg.optim.warmup_start == 0.1 and cfg.data.crop_scales == (1.0, 0.875, 0.75, 0.66)
    flags = parse_cli(JobConfig, ["--dropout", "0.5", "--fc-init-std", "0.001", "--crop-scales", "1", "0.75"], "")
    assert (flags.model.dropout, flags.model.fc_init_std, flags.data.crop_scales) == (0.5, 0.001, (1.0, 0.75))


def test_tin_offsets_start_at_tsm_shift():
    # TIN's offsets start at one frame, so it begins as TSM's shift and learns from there (the authors' 0.5 starts
    # every moved channel as a blur of two frames, and fine-tunes from TSM weights to get away with it).
    assert ModelConfig().offset_init == 1.0
    offsets = [float(t["offsets"].abs().mean()) for t in interlace_trace(ModelConfig(num_segments=4).build(3),
                                                                          torch.randn(2, 4, 3, 32, 32))]  # fmt: skip
    assert all(0.7 < o < 1.3 for o in offsets), offsets  # near 1 at init (random OffsetNet weights around it)


def offsets_moved(interlace_lr_mult: float, steps: int = 10) -> float:
    """Largest move of any TIN offset (frames) after a few SGD steps on clips of a bar sweeping right or left."""
    from tin_core.optim import optim_param_groups

    torch.manual_seed(0)
    model = build_model("tin", 2, num_segments=4, backbone="resnet18")
    groups = optim_param_groups(model, lr=0.02, weight_decay=5e-4, interlace_lr_mult=interlace_lr_mult)
    optimizer = torch.optim.SGD(groups, lr=0.02, momentum=0.9)
    clips = torch.zeros(8, 4, 3, 32, 32)
    for t in range(4):
        clips[:4, t, :, :, 4 + 7 * t : 9 + 7 * t] = 1.0
    clips[4:] = clips[:4].flip(1)
    labels = torch.tensor([0] * 4 + [1] * 4)
    before = interlace_trace(model, clips)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(clips + 0.1 * torch.randn_like(clips)), labels).backward()
        optimizer.step()
    after = interlace_trace(model, clips)
    return max((a["offsets"] - b["offsets"]).abs().max().item() for a, b in zip(after, before, strict=True))


def test_interlace_nets_learn_faster_than_the_backbone():
    # Offsets are frames moved by gradients of ~1e-3: at the base lr they stay near their start for a whole short run
    # from scratch, and TIN is TSM with noise (the ablations in RESULTS.md); the authors' fine-tuning keeps x1.
    assert JobConfig().optim.interlace_lr_mult == 100
    assert parse_cli(JobConfig, ["--config", str(AUTHORS)], "").optim.interlace_lr_mult == 1
    at_default, at_base = offsets_moved(JobConfig().optim.interlace_lr_mult), offsets_moved(1.0)
    assert at_default > 5 * at_base, (at_default, at_base)


def test_two_decoders_beside_one_training_worker_fill_two_cpus():
    # The embedded default runs on a laptop: one training worker (1 CPU) and two decoders of half a CPU each.
    from pipeline.train.driver import trial_cpus

    cfg = JobConfig()
    assert (cfg.data.decoders, cfg.data.cpus_per_decoder, cfg.dist.cpus_per_worker) == (2, 0.5, 1.0)
    assert trial_cpus(cfg) == 2
