"""--init-from: checkpoints in our, the authors' and mmaction2's layouts load into our classifiers."""

from __future__ import annotations

import re

import pytest
import torch

from tin_core import ModelConfig
from tin_core.checkpoints import init_from, layout_of

CONFIG = ModelConfig(arch="tin", backbone="resnet18", num_segments=4)


def authors_layout(state: dict) -> dict:
    """Our keys as the authors' TSM/TIN code names them (ops/models.py, ops/temporal_interlace.py)."""
    out = {}
    for key, value in state.items():
        key = key.replace(".conv1.temporal.offset_net.conv.", ".conv1.net1.biasnet.net.conv.")
        key = key.replace(".conv1.temporal.offset_net.fc1.", ".conv1.net1.biasnet.net.fc.")
        key = key.replace(".conv1.temporal.offset_net.fc2.", ".conv1.net1.biasnet.net.lastlayer.")
        key = key.replace(".conv1.temporal.weight_net.conv.", ".conv1.net1.weightnet.net.lastlayer.")
        key = key.replace(".conv1.conv.", ".conv1.net2.")
        key = re.sub(r"^backbone\.", "module.base_model.", key)
        out[re.sub(r"^fc\.", "module.new_fc.", key)] = value
    return out


def mmaction_layout(state: dict) -> dict:
    """Our keys as mmaction2's ResNetTIN / TSMHead name them (ConvModule conv/bn pairs, CombineNet net1/net2)."""
    out = {"data_preprocessor.mean": torch.zeros(3)}
    for key, value in state.items():
        key = key.replace(".conv1.temporal.", ".conv1.conv.net1.").replace(
            ".conv1.conv.weight", ".conv1.conv.net2.weight"
        )
        key = re.sub(r"\.bn([123])\.", r".conv\1.bn.", key)
        key = re.sub(r"(layer\d\.\d+)\.conv([23])\.weight", r"\1.conv\2.conv.weight", key)
        key = key.replace(".downsample.0.", ".downsample.conv.").replace(".downsample.1.", ".downsample.bn.")
        key = key.replace("backbone.conv1.weight", "backbone.conv1.conv.weight").replace(
            "backbone.bn1.", "backbone.conv1.bn."
        )
        out[re.sub(r"^fc\.", "cls_head.fc_cls.", key)] = value
    return out


def trained(config: ModelConfig = CONFIG, classes: int = 5, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = config.build(classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights no fresh model has
    return model


@pytest.mark.parametrize("layout", ["ours", "authors", "mmaction2"])
def test_every_layout_loads_exactly(layout):
    source = trained()
    state = {"ours": dict, "authors": authors_layout, "mmaction2": mmaction_layout}[layout](source.state_dict())
    assert layout_of({k.removeprefix("module."): v for k, v in state.items()}) == layout
    model = CONFIG.build(5)
    report = init_from(model, state)
    assert report.layout == layout and not report.head_replaced and report.kept_temporal_init == 0
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_tin_fine_tunes_from_tsm_with_a_new_head(tmp_path):
    tsm = trained(ModelConfig(arch="tsm", backbone="resnet18", num_segments=4), classes=400)
    path = tmp_path / "tsm_k400.pth"
    torch.save({"epoch": 50, "state_dict": authors_layout(tsm.state_dict())}, path)
    tin = ModelConfig(arch="tin", backbone="resnet18", num_segments=4, init_from=str(path)).build(5)  # via the config
    fresh = CONFIG.build(5)
    assert torch.equal(tin.backbone.layer2[0].conv1.conv.weight, tsm.backbone.layer2[0].conv1.conv.weight)
    assert tin.fc.weight.shape == (5, 512)  # the 400-class head was not loaded
    report = init_from(fresh, str(path))
    assert report.head_replaced and report.kept_temporal_init == 8 * 8  # 8 blocks x (6 OffsetNet + 2 WeightNet)


def test_a_checkpoint_that_does_not_fit_names_its_keys():
    state = trained().state_dict()
    state["backbone.layer9.0.conv1.weight"] = torch.zeros(1)
    del state["backbone.layer1.0.bn1.weight"]
    with pytest.raises(ValueError, match=r"layer9\.0\.conv1\.weight.*layer1\.0\.bn1\.weight"):
        init_from(CONFIG.build(5), state)
    wider = trained(ModelConfig(arch="tin", backbone="resnet34", num_segments=4)).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        init_from(CONFIG.build(5), wider)
