"""The job's config: sections, the typed CLI (choices, fixed-length tuples, groups), YAML files under the flags,
--print-config round trips, and errors that name the flag or key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.train.config import JobConfig, flat_values, from_dict, parse_cli
from pipeline.train.tune import SweepJobConfig

SHIPPED = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "mmit_tin_r50.yaml"


def test_shipped_file_parses_and_flags_win():
    cfg = parse_cli(JobConfig, ["--config", str(SHIPPED), "--epochs", "3", "--no-reverse"], "")
    assert (cfg.model.backbone, cfg.model.num_segments, cfg.data.frame_size, cfg.model.dropout) == (
        "resnet50", 8, 224, 0.8)  # fmt: skip
    assert cfg.optim.epochs == 3 and cfg.model.reverse is False  # flags over the file
    assert cfg.optim.lr_steps == (20, 40) and cfg.dist.use_gpu  # defaults and the file's own values


def test_flag_order_does_not_matter():
    before = parse_cli(JobConfig, ["--epochs", "3", "--config", str(SHIPPED)], "")
    after = parse_cli(JobConfig, ["--config", str(SHIPPED), "--epochs", "3"], "")
    assert before == after and before.optim.epochs == 3


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_cli(JobConfig, ["--arch", "tsm", "--lr", "0.1", "--data", "s3://b/mmit", "--print-config"], "")
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["model"]["arch"] == "tsm"
    (tmp_path / "printed.yaml").write_text(printed)
    again = parse_cli(JobConfig, ["--config", str(tmp_path / "printed.yaml")], "")
    assert again == JobConfig().override(arch="tsm", lr=0.1, root="s3://b/mmit")


def test_flat_and_nested_files_agree(tmp_path):
    flat = from_dict(JobConfig, {"arch": "tsn", "epochs": 2, "data": "/x", "lr_steps": [3, 4]})
    nested = from_dict(JobConfig, {"model": {"arch": "tsn"}, "optim": {"epochs": 2, "lr_steps": [3, 4]},
                                   "data": {"root": "/x"}})  # fmt: skip
    assert flat == nested and flat.optim.lr_steps == (3, 4)


def test_field_names_are_unique_across_sections():
    for cls in (JobConfig, SweepJobConfig):
        names = [name for section in vars(cls()).values() for name in vars(section)]
        assert len(names) == len(set(names)) == len(flat_values(cls()))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "i3d"], "invalid choice 'i3d' for argument '--arch'"),
        (["--zero-stage", "3"], "invalid choice '3' for argument '--zero-stage'"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
        (["--lr-range", "0.1", "0.2", "0.3"], "Unrecognized options: 0.3"),
        (["--lr-range", "0.1"], "Expected 2 values"),
        (["--lr-range", "0.2", "0.1"], "--lr-range must be two values 0 < low <= high"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_cli(SweepJobConfig, argv, "")
    assert exit_.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split()).replace("│ ", "")


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 2\nlearning_rate: 0.1\n", "unknown key 'learning_rate'"),
        ("model: {arch: tsm, depth: 50}\n", "unknown keys ['depth'] in section 'model'"),
        ("model: {arch: i3d}\n", "--arch must be one of tin, tsm, tsn, got 'i3d'"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_bad_files_exit_2_naming_the_key(tmp_path, text, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        parse_cli(JobConfig, ["--config", str(path)], "")
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_override_routes_flat_names_and_refuses_unknown_ones():
    cfg = JobConfig().override(arch="tsm", lr=0.5, num_workers=3)
    assert (cfg.model.arch, cfg.optim.lr, cfg.dist.num_workers) == ("tsm", 0.5, 3)
    assert JobConfig().model.arch == "tin"  # a copy: the defaults are untouched
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        JobConfig().override(learning_rate=0.1)
