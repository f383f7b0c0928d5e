"""cluster/: every KubeRay manifest, the cluster-launcher YAML and the Dockerfile hold together without a cluster.

Manifests parse and carry what KubeRay's ray.io/v1 types require, with no key outside them (a misspelt key is
dropped without a word by a lenient apply); the RayJobs run entrypoints and configs that exist, with overrides
that validate; the launcher YAML passes Ray's own schema; the Dockerfile copies what those entrypoints need."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from sstparse.config import load_yaml
from sstparse.train.config import JobConfig
from sstparse.tune.config import load_sweep
from tests.raycli import REPO

CLUSTER = REPO / "cluster"
MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
LAUNCHER = sorted((CLUSTER / "launcher").glob("*.yaml"))
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
SECRET = "sstparse-env"

# JSON field names of KubeRay's ray.io/v1 Go types (ray-operator/apis/ray/v1, KubeRay 1.5-1.6).
RAYCLUSTER_SPEC = {"upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
                   "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                   "headGroupSpec", "rayVersion", "workerGroupSpecs"}
HEAD_GROUP = {"template", "headService", "enableIngress", "resources", "labels", "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
AUTH_OPTIONS = {"mode", "secretName"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "resources", "ports",
             "volumeMounts", "securityContext", "lifecycle", "livenessProbe", "readinessProbe", "workingDir"}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def cluster_specs() -> list[tuple[str, dict]]:
    return [(name, doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"])
            for name, doc in documents()]


def rayjobs() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in documents() if doc["kind"] == "RayJob"]


def unknown(mapping: dict, allowed: set[str]) -> set[str]:
    return set(mapping) - allowed


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def locked_ray_version() -> str:
    return re.search(r"^ray==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)


def test_every_manifest_parses_as_a_kuberay_object():
    docs = documents()
    assert MANIFESTS and docs
    for name, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["kind"] in ("RayCluster", "RayJob"), name
        assert doc["metadata"]["name"], name
    assert {doc["kind"] for _, doc in docs} == {"RayCluster", "RayJob"}


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_cluster_spec_has_what_kuberay_requires(name, spec):
    assert not unknown(spec, RAYCLUSTER_SPEC), (name, unknown(spec, RAYCLUSTER_SPEC))
    # Token authentication on every cluster, and the same Ray as the image installs (requirements.lock).
    assert spec["authOptions"] == {"mode": "token"}, name
    assert spec["rayVersion"] == locked_ray_version() == ray.__version__, name
    head = spec["headGroupSpec"]
    assert not unknown(head, HEAD_GROUP), (name, unknown(head, HEAD_GROUP))
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: the head must not be exposed"
    groups = [head, *spec["workerGroupSpecs"]]
    for group in spec["workerGroupSpecs"]:
        assert not unknown(group, WORKER_GROUP), (name, unknown(group, WORKER_GROUP))
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    for group in groups:  # KubeRay's rayStartParams is a map of strings: a bare number is rejected
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
        assert group["template"]["spec"]["containers"], name
    for c in containers(spec):
        assert not unknown(c, CONTAINER), (name, unknown(c, CONTAINER))
        assert {"secretRef": {"name": SECRET}} in c["envFrom"], f"{name}: {c['name']} must read the Secret"
        assert not [e for e in c.get("env", []) if re.search(r"SECRET|KEY|TOKEN|PASSWORD", e["name"])
                    and "value" in e], f"{name}: a credential written into the manifest"
    images = {c["image"] for c in containers(spec)}
    assert len(images) == 1 and not images.pop().endswith(":latest"), name
    gpu = [c for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]
           if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu, f"{name}: no GPU worker group"
    for c in gpu:  # extended resources: requests must equal limits
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"], name


def entrypoint_parts(entrypoint: str) -> tuple[Path, Path, list[str]]:
    """(script, config, overrides) of ``python /app/jobs/X.py --config /app/jobs/configs/Y.yaml k=v ...``, the
    two paths mapped from the image's WORKDIR onto this repository."""
    tokens = shlex.split(entrypoint)
    assert tokens[0] == "python" and "--config" in tokens, entrypoint
    config = tokens[tokens.index("--config") + 1]
    overrides = [t for t in tokens[2:] if "=" in t and not t.startswith("-")]
    workdir = dockerfile_workdir()
    for path in (tokens[1], config):
        assert path.startswith(workdir + "/"), f"{path}: not under the image's WORKDIR {workdir}"
    return (REPO / tokens[1].removeprefix(workdir + "/"), REPO / config.removeprefix(workdir + "/"), overrides)


@pytest.mark.parametrize("name,doc", rayjobs(), ids=[n for n, _ in rayjobs()])
def test_rayjob_runs_an_existing_entrypoint_with_a_valid_config(name, doc):
    spec = doc["spec"]
    assert not unknown(spec, RAYJOB_SPEC), (name, unknown(spec, RAYJOB_SPEC))
    assert spec["rayClusterSpec"] and spec["entrypoint"], name
    script, config, overrides = entrypoint_parts(spec["entrypoint"])
    assert script.is_file() and script.parent == REPO / "jobs", f"{name}: {script} does not exist"
    assert config.is_file(), f"{name}: {config} does not exist"
    if script.name == "train.py":
        job = load_yaml(JobConfig, config, overrides)
        storage = job.train.storage_path
    else:
        assert script.name == "tune.py", name
        sweep, job = load_sweep(config, overrides)
        storage = sweep.storage_path  # the trials' checkpoints go under it too
    # Several nodes: shards and checkpoints on shared storage, one GPU per Train worker.
    assert job.data.root.startswith("s3://") and storage and storage.startswith("s3://"), name
    assert job.train.use_gpu, name


def test_both_jobs_have_a_rayjob():
    scripts = {entrypoint_parts(doc["spec"]["entrypoint"])[0].name for _, doc in rayjobs()}
    assert scripts == {"train.py", "tune.py"}


@pytest.mark.parametrize("path", LAUNCHER, ids=[p.name for p in LAUNCHER])
def test_launcher_config_passes_rays_schema(path):
    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # Ray's own check (`ray up` runs it too)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in types.values())
    assert all(t["node_config"]["InstanceType"] for t in types.values())
    assert config["file_mounts"]["~/sstparse"] == "."  # `ray up` runs from the repository root
    assert any("-c ~/sstparse/requirements.lock" in c and "~/sstparse" in c for c in config["setup_commands"])
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][-1]
    assert ".venv" in config["rsync_exclude"]


def dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_workdir() -> str:
    return [line.split()[1] for line in dockerfile_lines() if line.startswith("WORKDIR ")][-1]


def test_dockerfile_copies_what_the_entrypoints_need():
    lines = dockerfile_lines()
    copied = [src.rstrip("/") for line in lines if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert {"pyproject.toml", "requirements.lock", "platform", "datasets", "jobs"} <= set(copied)
    assert any("pip install -c requirements.lock ." in line for line in lines)
    # The package finds its label-domain cards through SSTPARSE_DATASETS once installed (not editable).
    assert f"SSTPARSE_DATASETS={dockerfile_workdir()}/datasets" in " ".join(lines)
    assert lines[-1].startswith("USER ") and lines[-1].split()[1] not in ("root", "0")
    for _, doc in rayjobs():
        script, config, _ = entrypoint_parts(doc["spec"]["entrypoint"])
        for path in (script, config):
            assert path.relative_to(REPO).parts[0] in copied, f"{path} is not copied into the image"
    # The build context keeps what is copied (the ignore file re-includes each source).
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{src}" in ignore or f"!{src}/" in ignore for src in copied)
