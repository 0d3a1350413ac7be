"""TIN/TSM/TSN models: structure as in the authors' code, initial values, training step, compile and export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from tin_core import (
    OffsetNet,
    TemporalInterlace,
    TemporalShift,
    build_model,
    classification_metrics,
    complexity,
    complexity_report,
    interlace_trace,
    map_over_classes,
    map_over_videos,
    optim_param_groups,
    temporal_interlace_reference,
    top_k_accuracy,
)

T = 4


def tiny(arch, num_classes=5, **kwargs):
    torch.manual_seed(0)
    return build_model(arch, num_classes, num_segments=T, backbone="resnet18", **kwargs)


def zero_init_interlace(module: TemporalInterlace) -> None:
    with torch.no_grad():
        for layer in (module.offset_net.conv, module.offset_net.fc1, module.weight_net.conv):
            layer.weight.zero_()
        module.offset_net.fc2.weight.zero_()


def test_initial_offsets_and_weights():
    module = TemporalInterlace(64, T)
    zero_init_interlace(module)
    z = torch.randn(3, 16, T)
    torch.testing.assert_close(module.offset_net(z), torch.full((3, 2), 0.5), atol=1e-4, rtol=0)  # the authors' start
    torch.testing.assert_close(module.weight_net(z), torch.ones(3, T, 2))


def test_interlace_module_matches_authors_layout():
    """fold = C // 4 channels in 4 groups with offsets [+o0, +o1, -o0, -o1], weights [w0, w1, w0, w1]; the rest pass."""
    torch.manual_seed(1)
    module = TemporalInterlace(32, T)
    x = torch.randn(2 * T, 32, 5, 5)
    out = module(x)
    clip = x.view(2, T, 32, 5, 5)
    z = clip[:, :, :8].mean(dim=(3, 4)).transpose(1, 2)
    o, w = module.offset_net(z), module.weight_net(z)
    offsets = torch.stack([o[:, 0], o[:, 1], -o[:, 0], -o[:, 1]], dim=1)
    weights = torch.stack([w[..., 0], w[..., 1], w[..., 0], w[..., 1]], dim=2)
    expected = temporal_interlace_reference(clip[:, :, :8], offsets, weights).reshape(2 * T, 8, 5, 5)
    torch.testing.assert_close(out[:, :8], expected)
    assert torch.equal(out[:, 8:], x[:, 8:])
    assert isinstance(module.offset_net.conv, torch.nn.Conv1d) and module.offset_net.conv.out_channels == 1
    assert module.offset_net.fc1.in_features == T and module.offset_net.fc2.out_features == 2
    assert module.weight_net.conv.out_channels == 2 and module.weight_net.conv.kernel_size == (3,)


@pytest.mark.parametrize("groups, reverse", [(1, True), (2, True), (4, True), (2, False), (4, False)])
def test_interlace_variants(groups, reverse):
    module = TemporalInterlace(64, T, groups=groups, reverse=reverse)
    assert module.offset_net.fc2.out_features == groups and module.weight_net.conv.out_channels == groups
    out = module(torch.randn(T, 64, 3, 3))
    assert out.shape == (T, 64, 3, 3)


def test_interlace_bad_groups_rejected():
    with pytest.raises(ValueError, match="do not divide"):
        TemporalInterlace(24, T, shift_div=4, groups=4, reverse=True)


def test_paper_offset_range_option():
    module = TemporalInterlace(64, 8, offset_range="paper")
    with torch.no_grad():
        module.offset_net.fc2.bias.fill_(50.0)  # saturate the sigmoid
    assert module.offset_net(torch.randn(1, 16, 8)).max().item() == pytest.approx(4.0)  # T / 2
    with pytest.raises(ValueError, match="offset_range"):
        OffsetNet(16, 8, offset_range="wide")


def test_tin_started_at_offset_one_with_zero_init_is_tsm():
    """offset_init=1 and zero_init: every + group reads frame t-1, every - group frame t+1, for any input, exactly
    TSM's shift of C/8 channels each way (TIN's shift_div 4 moves C/4 in all)."""
    module = TemporalInterlace(64, T, offset_init=1.0, zero_init=True)
    x = 3 * torch.randn(2 * T, 64, 3, 3)
    out = module(x).view(2, T, 64, 3, 3)
    clip = x.view(2, T, 64, 3, 3)
    expected = torch.zeros_like(clip)
    g = 4  # 16 interlaced channels in 4 groups: offsets [+1, +1, -1, -1]
    expected[:, 1:, : 2 * g] = clip[:, :-1, : 2 * g]
    expected[:, :-1, 2 * g : 4 * g] = clip[:, 1:, 2 * g : 4 * g]
    expected[:, :, 4 * g :] = clip[:, :, 4 * g :]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("offset_range, bad", [("code", 2.0), ("code", -2.5), ("paper", 4.0)])
def test_offset_init_must_lie_inside_the_range(offset_range, bad):
    with pytest.raises(ValueError, match="outside the offset range"):
        TemporalInterlace(64, 8, offset_range=offset_range, offset_init=bad)
    module = TemporalInterlace(64, 8, offset_range=offset_range, offset_init=bad * 0.7)
    zero_init_interlace(module)
    torch.testing.assert_close(module.offset_net(torch.randn(2, 16, 8)), torch.full((2, 2), bad * 0.7))


def test_fc_init_std_zero_keeps_torch_default_init():
    small, default = tiny("tsn", fc_init_std=0.001), tiny("tsn", fc_init_std=0.0)
    assert 0.0005 < small.fc.weight.std().item() < 0.002 and small.fc.bias.abs().sum() == 0
    bound = 1 / math.sqrt(default.fc.in_features)  # nn.Linear's kaiming-uniform bound
    assert 0.5 * bound < default.fc.weight.abs().max().item() <= bound and default.fc.bias.abs().sum() > 0


@pytest.mark.parametrize("arch", ["tsn", "tsm", "tin"])
def test_archs_forward_backward(arch):
    model = tiny(arch)
    clips = torch.randn(2, T, 3, 32, 32)
    logits = model(clips)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    temporal = [m for m in model.modules() if isinstance(m, (TemporalInterlace, TemporalShift))]
    assert len(temporal) == {"tsn": 0, "tsm": 8, "tin": 8}[arch]  # one per residual block of ResNet-18
    if arch == "tin":
        assert all(m.offset_net.fc2.weight.grad.abs().sum() > 0 for m in temporal), "offsets must receive gradient"


def test_tsn_ignores_frame_order_but_tin_does_not():
    clips = torch.randn(1, T, 3, 32, 32)
    reversed_clips = clips.flip(1)
    for arch, order_blind in [("tsn", True), ("tsm", False), ("tin", False)]:
        model = tiny(arch, dropout=0.0).eval()
        with torch.no_grad():
            model.fc.weight.normal_()
            same = torch.allclose(model(clips), model(reversed_clips), atol=1e-5)
        assert same == order_blind, arch


def test_consensus_is_the_mean_of_frame_logits():
    model = tiny("tsn", num_classes=7).eval()
    clips = torch.randn(2, T, 3, 32, 32)
    per_frame = model.fc(model.backbone(clips.flatten(0, 1))).view(2, T, 7)
    torch.testing.assert_close(model(clips), per_frame.mean(1))
    with pytest.raises(ValueError, match=r"\[N, 4, 3, H, W\]"):
        model(torch.randn(2, T + 1, 3, 32, 32))


def authors_tin_r50_params(num_classes: int, t: int) -> int:
    """Parameters of the authors' TIN-R50 (deepcs233/TIN ops/models.py + ops/temporal_interlace.py), counted from
    their layer list: torchvision ResNet-50 without its fc, their new_fc, and per block a BiasNet (Conv1d(fold, 1, 3),
    Linear(T, T), Linear(T, 2)) and a WeightNet (Conv1d(fold, 2, 3)) with fold = conv1.in_channels // 4."""
    backbone = sum(p.numel() for p in torchvision.models.resnet50().parameters()) - (2048 * 1000 + 1000)
    head = 2048 * num_classes + num_classes
    in_channels = [64, 256, 256] + [256, 512, 512, 512] + [512] + [1024] * 5 + [1024, 2048, 2048]
    tin = 0
    for c in in_channels:
        fold = c // 4
        tin += (fold * 3 + 1) + (t * t + t) + (t * 2 + 2) + (fold * 2 * 3 + 2)
    return backbone + head + tin


@pytest.mark.parametrize("num_classes, t", [(174, 8), (313, 8), (400, 16)])
def test_tin_r50_parameter_count_equals_authors(num_classes, t):
    model = build_model("tin", num_classes, num_segments=t, backbone="resnet50")
    assert sum(p.numel() for p in model.parameters()) == authors_tin_r50_params(num_classes, t)


def test_pretrained_from_local_path(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("tin", 3, num_segments=T, backbone="resnet18", pretrained=str(path))
    torch.testing.assert_close(model.backbone.layer2[0].conv1.conv.weight, reference.layer2[0].conv1.weight)
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises((ValueError, RuntimeError), match="bad.pth|size mismatch"):
        build_model("tin", 3, num_segments=T, backbone="resnet18", pretrained=str(tmp_path / "bad.pth"))


def test_param_groups_follow_authors():
    model = tiny("tin")
    groups = {g["name"]: g for g in optim_param_groups(model, lr=0.01, weight_decay=1e-4, fc_lr5=True)}
    assert groups["first_conv_weight"]["params"] == [model.backbone.conv1.weight]
    assert groups["lr5_weight"]["params"] == [model.fc.weight] and groups["lr5_weight"]["lr"] == pytest.approx(0.05)
    assert groups["lr10_bias"]["params"] == [model.fc.bias] and groups["lr10_bias"]["lr"] == pytest.approx(0.1)
    assert groups["normal_bias"]["lr"] == pytest.approx(0.02) and groups["normal_bias"]["weight_decay"] == 0
    assert groups["bn"]["weight_decay"] == 0 and groups["normal_weight"]["weight_decay"] == pytest.approx(1e-4)
    offset_fc = model.backbone.layer1[0].conv1.temporal.offset_net.fc1
    assert any(p is offset_fc.weight for p in groups["normal_weight"]["params"])
    assert any(p is offset_fc.bias for p in groups["normal_bias"]["params"])
    all_params = [p for g in groups.values() for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))

    plain = {g["name"]: g for g in optim_param_groups(tiny("tsn"), 0.01, 1e-4, fc_lr5=False)}
    assert "lr5_weight" not in plain and "lr10_bias" not in plain

    faster = {g["name"]: g for g in optim_param_groups(model, 0.01, 1e-4, fc_lr5=True, interlace_lr_mult=10)}
    assert any(p is offset_fc.weight for p in faster["normal_weight_interlace"]["params"])
    assert faster["normal_weight_interlace"]["lr"] == pytest.approx(0.1) and faster["normal_bias_interlace"][
        "lr"
    ] == pytest.approx(0.2)
    assert not any(p is offset_fc.weight for p in faster["normal_weight"]["params"])
    assert faster["normal_weight_interlace"]["weight_decay"] == pytest.approx(1e-4)


def test_partial_bn_trains_only_first_bn():
    model = tiny("tsm", partial_bn=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns[0].training and bns[0].weight.requires_grad
    assert not any(b.training or b.weight.requires_grad for b in bns[1:])
    groups = {g["name"]: g for g in optim_param_groups(model, 0.01, 1e-4)}
    assert len(groups["bn"]["params"]) == 2


@pytest.mark.integration
def test_torch_compile_fullgraph_model():
    model = tiny("tin").eval()
    clips = torch.randn(1, T, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(clips), model(clips), atol=1e-4, rtol=1e-4)


def test_torch_export_keeps_custom_op():
    model = tiny("tin").eval()
    exported = torch.export.export(model, (torch.randn(1, T, 3, 32, 32),))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert "tin.interlace.default" in targets
    clips = torch.randn(1, T, 3, 32, 32)
    torch.testing.assert_close(exported.module()(clips), model(clips))


def test_interlace_trace_reports_every_layer():
    model = tiny("tin")
    trace = interlace_trace(model, torch.randn(2, T, 3, 32, 32))
    assert len(trace) == 8
    assert trace[0]["layer"] == "backbone.layer1.0.conv1.temporal"
    assert trace[0]["offsets"].shape == (2, 2) and trace[0]["weights"].shape == (2, T, 2)
    assert model.training, "the trace must restore the training mode"


@pytest.mark.integration
def test_training_moves_the_offsets_and_weights():
    """The paper's Figure 5 needs offsets that learn: a few SGD steps on a direction task (a bright bar sweeping
    left or right) move TIN's offsets away from their start and make the weights differ across frames."""
    torch.manual_seed(0)
    model = tiny("tin", num_classes=2, dropout=0.0, fc_init_std=0.0)
    optimizer = torch.optim.SGD(optim_param_groups(model, lr=0.05, weight_decay=0.0, interlace_lr_mult=10.0),
                                lr=0.05, momentum=0.9)  # fmt: skip
    clips = torch.zeros(8, T, 3, 32, 32)
    for t in range(T):
        clips[:4, t, :, :, 4 + 6 * t : 8 + 6 * t] = 1.0  # moving right
    clips[4:] = clips[:4].flip(1)  # moving left: the same frames, reversed
    labels = torch.tensor([0] * 4 + [1] * 4)
    before = interlace_trace(model, clips)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(clips + 0.1 * torch.randn_like(clips)), labels).backward()
        optimizer.step()
    after = interlace_trace(model, clips)
    moved = max((a["offsets"] - b["offsets"]).abs().max().item() for a, b in zip(after, before, strict=True))
    assert moved > 0.05, f"offsets moved at most {moved:.4f} frames"
    spread = max(a["weights"].std(dim=1).max().item() for a in after)
    assert spread > 0.01, "the weights per frame should differ over the clip"


def test_complexity_report():
    tsn, tin = complexity(tiny("tsn"), (1, T, 3, 64, 64)), complexity(tiny("tin"), (1, T, 3, 64, 64))
    assert tin["params"] > tsn["params"]
    assert tin["gflops"] == pytest.approx(tsn["gflops"], rel=0.01) and tsn["gflops"] > 0.5
    report = complexity_report({"tsn": tiny("tsn"), "tin": tiny("tin")}, (1, T, 3, 64, 64))
    assert "tsn" in report and "tin" in report and "GFLOPs" in report


def test_metrics():
    targets = np.array([[1, 0, 1], [0, 1, 0]])
    perfect = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1]])
    assert map_over_videos(perfect, targets) == pytest.approx(1.0)
    swapped = np.array([[0.1, 0.9, 0.2], [0.2, 0.7, 0.1]])
    # video 0: positives at ranks 2 and 3 -> AP = (1/2 + 2/3) / 2; video 1: AP 1.
    assert map_over_videos(swapped, targets) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert map_over_classes(perfect, targets) == pytest.approx(1.0)
    assert top_k_accuracy(np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]), np.array([2, 0]), 1) == pytest.approx(0.5)
    single = classification_metrics(np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]), np.array([2, 0]))
    assert set(single) == {"map", "map_classes", "top1", "top5", "mean_class_accuracy"} and single["top5"] == 1.0
    # three videos of class 0 right, the one of class 1 wrong: top-1 0.75, mean over the two classes 0.5
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    unbalanced = classification_metrics(scores, np.array([0, 0, 0, 1]))
    assert unbalanced["top1"] == pytest.approx(0.75) and unbalanced["mean_class_accuracy"] == pytest.approx(0.5)
