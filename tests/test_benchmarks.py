"""The benchmarks' own arithmetic and their results file (the runs themselves are the benchmarks' job)."""

import numpy as np
import pytest

from benchmarks import results
from benchmarks.plain_loop import train_plain
from benchmarks.temporal import FRAME_VISIBLE_PAIRS, ceiling_report, main, scores_report
from pipeline.data.annotations import read_mmit
from pipeline.data.synthetic import SyntheticSpec, generate_mmit

# The synthetic events' five time-reversed pairs (classes 0/1 ... 8/9) and one clip per labelled direction.
TARGETS = np.eye(10, dtype=np.float32)


def test_a_model_that_knows_time_scores_perfectly():
    report = scores_report(TARGETS + 0.0, TARGETS)
    assert report["samples_map"] == report["reversed_map"] == report["direction_accuracy"] == 1.0
    assert report["visible_map"] == report["hidden_map"] == 1.0


def test_a_time_blind_model_guesses_directions():
    blind = np.repeat(TARGETS.reshape(10, 5, 2).sum(axis=2), 2, axis=1)  # both directions of the shown pair
    blind[:, ::2] += 1e-3  # always "forward"
    assert scores_report(blind, TARGETS)["direction_accuracy"] == 0.5
    assert ceiling_report(TARGETS)["samples_map"] == pytest.approx(0.75, abs=0.05)  # right class first half the time


def test_single_frames_show_only_some_pairs():
    # growing and brightening clips: a coin toss between the pair's two classes (0.75); moving and turning clips: the
    # right class among the six of those pairs, tied (mean of 1/rank, 0.41)
    expected = (4 * 0.75 + 6 * sum(1 / r for r in range(1, 7)) / 6) / 10
    assert FRAME_VISIBLE_PAIRS == (2, 3)
    ceiling = ceiling_report(TARGETS, FRAME_VISIBLE_PAIRS)
    assert ceiling["samples_map"] == pytest.approx(expected, abs=0.03)
    assert ceiling["visible_map"] == pytest.approx(0.75, abs=0.05)  # the pair known, its direction a coin toss
    assert ceiling["hidden_map"] == pytest.approx(sum(1 / r for r in range(1, 7)) / 6, abs=0.05)  # six classes tied
    assert ceiling["direction_accuracy"] == pytest.approx(0.5, abs=0.1)


def test_scores_on_training_clips_never_replace_the_benchmark_table(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--scored-on", "training"])
    assert exit_info.value.code == 2 and "--ablation NAME or --no-record" in capsys.readouterr().err


def test_the_plain_loop_scores_the_asked_clips_at_its_best_validation_epoch(tmp_path):
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=6, num_val=4, frames=8, size=32))
    train, val = read_mmit(str(root), "training"), read_mmit(str(root), "validation")
    budget = {"num_segments": 2, "batch_size": 3, "epochs": 1, "lr": 0.01, "frame_size": 32}
    on_val, on_train = train_plain("tsn", train, val, budget), train_plain("tsn", train, val, budget, scored=train)
    assert on_val.shape == (4, train.num_classes) and on_train.shape == (6, train.num_classes)
    assert np.all((on_train > 0) & (on_train < 1))


@pytest.fixture
def results_file(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    return tmp_path / "RESULTS.md"


def test_sections_are_replaced_not_repeated(results_file):
    results.record("op", "first", command="python -m benchmarks.op")
    results.record("data", "kept", command="python -m benchmarks.data")
    results.record("op", "second", command="python -m benchmarks.op")
    text = results_file.read_text()
    assert text.count("## op") == 1 and "second" in text and "first" not in text and "kept" in text
    assert "`python -m benchmarks.op`" in text and "commit " in text


def test_table_rows_are_kept_and_replaced_by_label(results_file):
    header = "| run | value | measured |"
    results.record_row("ablations", header, "a", "1", command="c", at_commit="abc")
    results.record_row("ablations", header, "b", "2", command="c", at_commit="abc")
    results.record_row("ablations", header, "a", "3", command="c", at_commit="def")
    rows = [line for line in results_file.read_text().splitlines() if line.startswith("| a") or line.startswith("| b")]
    assert len(rows) == 2 and rows[0].startswith("| b | 2 |") and rows[1].startswith("| a | 3 |")
    assert "def" in rows[1]
