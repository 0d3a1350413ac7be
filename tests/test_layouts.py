"""--format: each dataset layout under one root read into a manifest, and a single-label format trained end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import local_ray
from mlflow.tracking import MlflowClient

from pipeline.data.annotations import read_mmit
from pipeline.data.layouts import DIRECTION_SENSITIVE, FORMATS, read_dataset
from pipeline.data.synthetic import SyntheticSpec, generate_mmit
from pipeline.train.config import JobConfig
from pipeline.train.driver import run_training
from pipeline.train.loop import META_FILE, clip_spec

REPO = Path(__file__).resolve().parents[1]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


LAYOUTS = {
    "kinetics": {"train.csv": "label,youtube_id,time_start,time_end,split\nabseiling,0347ZoDXyP0,14,24,train\n"
                              "air drumming,-eGnPDG5Pxs,0,10,train\n",
                 "validate.csv": "label,youtube_id,time_start,time_end,split\nair drumming,2_KsCsvIfgo,5,15,val\n"},
    "sthv2": {"labels/labels.json": json.dumps({"Pushing something from left to right": "0",
                                                "Pushing something from right to left": "1"}),
              "labels/train.json": json.dumps([{"id": "101", "template": "Pushing [something] from left to right"},
                                               {"id": "102", "template": "Pushing [something] from right to left"}]),
              "labels/validation.json": json.dumps([{"id": "201",
                                                     "template": "Pushing [something] from right to left"}])},
    "sthv1": {"something-something-v1-labels.csv": "Pushing something from left to right\n"
                                                   "Pushing something from right to left\n",
              "something-something-v1-train.csv": "101;Pushing something from left to right\n"
                                                  "102;Pushing something from right to left\n",
              "something-something-v1-validation.csv": "201;Pushing something from right to left\n"},
    "jester": {"jester-v1-labels.csv": "Swiping Left\nSwiping Right\n",
               "jester-v1-train.csv": "1;Swiping Left\n2;Swiping Right\n",
               "jester-v1-validation.csv": "9;Swiping Right\n"},
    "ucf101": {"ucfTrainTestlist/classInd.txt": "1 ApplyEyeMakeup\n2 Archery\n",
               "ucfTrainTestlist/trainlist01.txt": "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                                   "Archery/v_Archery_g08_c01.avi 2\n",
               "ucfTrainTestlist/testlist01.txt": "Archery/v_Archery_g01_c01.avi\n"},
    "hmdb51": {"testTrainMulti_7030_splits/brush_hair_test_split1.txt": "a.avi 1\nb.avi 0\n",
               "testTrainMulti_7030_splits/cartwheel_test_split1.txt": "c.avi 1\nd.avi 2\ne.avi 0\n"},
    "list": {"classes.txt": "walk\nrun\n", "train.txt": "a.mp4 30 0\nb.mp4 30 1\n", "val.txt": "c.mp4 30 1\n"},
}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(LAYOUTS))
def test_each_layout_reads_both_splits(fmt, tmp_path):
    root = write(tmp_path / fmt, LAYOUTS[fmt])
    train = read_dataset(str(root), fmt, "training")
    val = read_dataset(str(root), fmt, "validation", train.class_names)
    assert len(train.class_names) == 2 and len(train.records) == 2 and len(val.records) == 1
    assert all(r.uri.startswith(str(root / "videos")) for r in train.records + val.records)
    assert sorted(r.labels for r in train.records) == [(0,), (1,)]
    assert val.records[0].labels == (1,) and not train.multi_label


def test_formats_are_the_flag_choices_and_direction_sensitive_ones_never_flip(tmp_path):
    assert set(LAYOUTS) | {"mmit"} == set(FORMATS)
    for fmt in FORMATS:
        spec = clip_spec(JobConfig().override(format=fmt, flip=True))
        assert spec.flip == (fmt not in DIRECTION_SENSITIVE), fmt
    with pytest.raises(FileNotFoundError):
        read_dataset(str(tmp_path), "ucf101", "training")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {"TIN_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    with local_ray(tmp_path_factory.mktemp("ray"), num_cpus=2, env=env):
        yield


def test_a_single_label_format_trains_end_to_end(cluster, tmp_path):
    """UCF101's layout over generated clips (each clip's first label as its class): top-1 and top-5 are logged; the
    model then scores a Kinetics layout of the same clips whose validation split lacks a class."""
    mmit = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=12, num_val=6, frames=12, size=32))
    names = read_mmit(str(mmit)).class_names
    labels = [n.replace(" ", "_") for n in names]  # class names as folder names
    order = sorted(range(len(names)), key=lambda k: labels[k])  # Kinetics' ids: sorted names
    root = tmp_path / "ucf"
    lists = {"train": [], "test": []}
    for split, key in (("training", "train"), ("validation", "test")):
        for record in read_mmit(str(mmit), split).records:
            name = labels[record.labels[0]]
            target = root / "videos" / name / Path(record.uri).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(record.uri, target)
            lists[key].append(
                f"{name}/{target.name}" + (f" {order.index(record.labels[0]) + 1}" if key == "train" else "")
            )
    index = "".join(f"{i + 1} {labels[k]}\n" for i, k in enumerate(order))
    write(root, {"ucfTrainTestlist/classInd.txt": index,
                 "ucfTrainTestlist/trainlist01.txt": "\n".join(lists["train"]) + "\n",
                 "ucfTrainTestlist/testlist01.txt": "\n".join(lists["test"]) + "\n"})  # fmt: skip
    cfg = JobConfig().override(root=str(root), format="ucf101", num_segments=4, frame_size=32, epochs=1, batch_size=4,
                               storage=str(tmp_path / "runs"), name="ucf", mlflow_uri=f"sqlite:///{tmp_path}/m.db",
                               experiment="tests", register_as="tiny-ucf")  # fmt: skip
    outcome = run_training(cfg)
    m = outcome.metrics
    assert m["val_videos"] == 6 and 0 <= m["val_top1"] <= m["val_top5"] <= 1 and 0 <= m["val_mean_class_accuracy"] <= 1
    # The confusion counts behind the run's figure agree with top-1: every video once, the diagonal its hits.
    confusion = np.array(json.loads((Path(outcome.checkpoint) / META_FILE).read_text())["confusion"])
    assert confusion.shape == (len(names), len(names)) and confusion.sum() == 6
    assert np.trace(confusion) / 6 == pytest.approx(m["val_top1"])
    artifacts = {a.path for a in MlflowClient(cfg.tracking.mlflow_uri).list_artifacts(outcome.run_id, "plots")}
    assert "plots/confusion_matrix.png" in artifacts

    # Kinetics derives its classes from a split's rows; the evaluation job must keep the model's ids instead.
    kinetics = tmp_path / "kinetics"
    rows = []
    for record in read_mmit(str(mmit), "validation").records:
        label = labels[record.labels[0]]
        if label == labels[order[0]]:
            continue  # the validation split lacks the first class
        target = kinetics / "videos" / label / f"{Path(record.uri).stem}_000000_000010.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.uri, target)
        rows.append(f"{label},{Path(record.uri).stem},0,10,val\n")
    header = "label,youtube_id,time_start,time_end,split\n"
    write(kinetics, {"train.csv": header, "validate.csv": header + "".join(rows)})
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate_mmit.py"), "--model", "models:/tiny-ucf/1", "--data",
         str(kinetics), "--format", "kinetics", "--mlflow-uri", cfg.tracking.mlflow_uri],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["videos"] == len(rows) and 0 <= summary["val_top1"] <= 1
