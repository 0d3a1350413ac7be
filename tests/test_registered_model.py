"""The registered model stands alone: it ships tin_core and its own code file only, declares what it imports, loads
and predicts in a fresh interpreter that is refused everything else, without warnings, and answers through
`mlflow models serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from importlib import metadata as md
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import current_tracking_uri, free_port
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.registry.serving import model_config
from pipeline.registry.tracking import log_and_register_model, pyfunc_requirements, start_run
from tin_core import ModelConfig

SEGMENTS, CLASSES = 4, 5

# Runs in a fresh `python -I -S` (no cwd, PYTHONPATH, user or system site-packages) whose only packages are the
# declared requirements and their dependency closure, so a missing declaration or a stray import of the training stack
# (this checkout, Ray, scikit-learn, ...) fails here.
FRESH = r"""
import json, sys, warnings
site, model_dir, segments = json.loads(sys.argv[1])
sys.path.append(site)
import mlflow, numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = mlflow.pyfunc.load_model(model_dir)
    probs = model.predict(np.random.default_rng(0).integers(0, 255, (2, segments, 50, 60, 3), dtype=np.uint8))
import tin_core
print(json.dumps({"shape": list(probs.shape), "warnings": [str(w.message)[:200] for w in caught],
                  "tin_core": tin_core.__file__}))
"""


def requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` pull in (markers evaluated here, extras not taken)."""
    closure, todo = set(), [Requirement(r).name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in closure:
            closure.add(name)
            todo += [r.name for r in map(Requirement, md.requires(name) or []) if not r.marker or r.marker.evaluate()]
    return closure


def site_of(distributions: set[str], folder: Path) -> Path:
    """A folder of links to the installed files of `distributions` only: a site-packages with nothing else."""
    folder.mkdir()
    for dist in md.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in distributions:
            continue
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists() and top not in ("..", "bin"):
                (folder / top).symlink_to(source)
    return folder


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    tracking = f"sqlite:///{tmp}/mlflow.db"
    with current_tracking_uri(tracking):
        model = ModelConfig(arch="tin", num_segments=SEGMENTS)
        torch.manual_seed(7)
        torch.save(model.build(CLASSES).state_dict(), tmp / "model.pt")
        config = model_config(model, CLASSES, 32, 36, [f"c{k}" for k in range(CLASSES)], True)
        tracker = start_run(tracking, "standalone", "run", {})
        clips = np.zeros((4, SEGMENTS, 224, 224, 3), np.uint8)
        log_and_register_model(tracker, tmp / "model.pt", config, "standalone", 0.5, clips)
        yield tracking, "models:/standalone@champion"


def test_a_registered_model_initialises_a_fine_tuning_run(registered, tmp_path):
    """--init-from models:/...: the registered weights reach a new model, with a head for another class count."""
    from pipeline.registry.tracking import registered_weights

    tracking, uri = registered
    weights = registered_weights(uri, tracking)
    saved = torch.load(weights, weights_only=True)
    model = ModelConfig(arch="tin", num_segments=SEGMENTS, init_from=weights).build(CLASSES + 2)
    assert torch.equal(model.state_dict()["backbone.layer3.1.conv1.temporal.offset_net.fc2.bias"],
                       saved["backbone.layer3.1.conv1.temporal.offset_net.fc2.bias"])  # fmt: skip
    assert torch.equal(model.backbone.conv1.weight, saved["backbone.conv1.weight"]) and model.fc.out_features == 7


def test_the_model_ships_only_tin_core_and_its_code(registered):
    tracking, uri = registered
    local = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=tracking))
    assert sorted(p.name for p in (local / "code").iterdir()) == ["tin_core"]
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements == pyfunc_requirements() and not any(r.startswith(("scikit", "ray")) for r in requirements)
    example = list(local.glob("input_example*"))
    assert example and sum(p.stat().st_size for p in example) < 200_000  # one clip of at most 32 px, not 4 x 224


@pytest.mark.integration
def test_loads_and_predicts_in_a_fresh_interpreter_with_only_its_requirements(registered, tmp_path):
    tracking, uri = registered
    local = mlflow.artifacts.download_artifacts(uri, tracking_uri=tracking)
    declared = (Path(local) / "requirements.txt").read_text().split()
    closure = requirement_closure(declared)
    assert not closure & {"mlflow", "scikit-learn", "ray", "deepspeed", "av", "decord", "s3fs"}, closure
    site = site_of(closure, tmp_path / "site")
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    result = subprocess.run([sys.executable, "-I", "-S", "-c", FRESH, json.dumps([str(site), local, SEGMENTS])],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, CLASSES] and report["warnings"] == [], report
    assert "/code/tin_core/" in report["tin_core"], report["tin_core"]  # the model's copy, not this checkout
    assert "WARNING" not in result.stderr and "Warning" not in result.stderr, result.stderr[-2000:]


@pytest.mark.integration
def test_mlflow_models_serve_answers_a_json_request(registered):
    tracking, uri = registered
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    command = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-3000:]
                time.sleep(1)
        clip = np.random.default_rng(0).integers(0, 255, (1, SEGMENTS, 40, 40, 3)).tolist()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": clip}).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        probs = np.asarray(answer["predictions"])
        assert probs.shape == (1, CLASSES) and ((probs > 0) & (probs < 1)).all()
    finally:
        server.terminate()
        server.wait(timeout=30)
