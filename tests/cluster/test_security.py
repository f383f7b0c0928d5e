"""Security checks that need no cluster: nothing a user supplies is unpickled (a scan of the code), and credentials
are masked wherever a config is recorded. The end-to-end counterparts: test_local_cluster.py (token auth) and
test_s3_e2e.py (a fake key through a whole run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sstparse import redact
from sstparse.config import TrackingConfig
from tests.raycli import REPO
from tests.stores import sqlite_uri

CODE = sorted((REPO / "platform").rglob("*.py")) + sorted((REPO / "jobs").rglob("*.py"))


def calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else k.value
    return None


def unsafe_loads(path: Path) -> list[str]:
    """Deserialisation that can run code: torch.load without weights_only=True, pickle/cloudpickle/dill/joblib,
    numpy with allow_pickle=True, yaml without the safe loader."""
    found = []
    for node, func in calls(path):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{node.lineno}: {func}"
        if func == "torch.load" and keyword(node, "weights_only") is not True:
            found.append(where + " without weights_only=True")
        elif func.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib") and func.endswith(("load", "loads")):
            found.append(where)
        elif func in ("np.load", "numpy.load") and keyword(node, "allow_pickle") not in (None, False):
            found.append(where + " with allow_pickle")
        elif func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(where + " (use yaml.safe_load)")
    return found


def test_the_scan_finds_unsafe_loads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, pickle, numpy as np, yaml\n"
                   "torch.load('a')\ntorch.load('a', weights_only=False)\npickle.loads(b'')\n"
                   "np.load('a', allow_pickle=True)\nyaml.load('a')\n"
                   "torch.load('a', map_location='cpu', weights_only=True)\nnp.load('a')\nyaml.safe_load('a')\n")
    found = unsafe_loads(bad)
    assert [f.split(": ", 1)[1] for f in found] == [
        "torch.load without weights_only=True", "torch.load without weights_only=True", "pickle.loads",
        "np.load with allow_pickle", "yaml.load (use yaml.safe_load)"]


def test_no_unsafe_deserialisation_in_the_code():
    assert CODE
    found = [f for path in CODE for f in unsafe_loads(path)]
    assert not found, "\n".join(found)


def test_torch_load_is_used_and_always_weights_only():
    # The scan above must not pass because it looks at nothing: the checkpoint and backbone loaders use torch.load.
    uses = [f"{p.name}:{n.lineno}" for p in CODE for n, func in calls(p) if func == "torch.load"]
    assert len(uses) >= 3, uses


@pytest.mark.parametrize("config,masked", [
    ({"data": {"storage_options": {"key": "AKIA1", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://x"}}}},
     {"data": {"storage_options": {"key": "***", "secret": "***", "client_kwargs": {"endpoint_url": "http://x"}}}}),
    ({"client_kwargs": {"aws_secret_access_key": "s", "aws_session_token": "t", "region_name": "eu"}},
     {"client_kwargs": {"aws_secret_access_key": "***", "aws_session_token": "***", "region_name": "eu"}}),
    ({"tracking_uri": "postgresql://mlflow:pa55@db:5432/mlflow", "roots": ["s3://b/p"]},
     {"tracking_uri": "postgresql://mlflow:***@db:5432/mlflow", "roots": ["s3://b/p"]}),
    ({"storage_options": {}, "lr": 0.1, "token": None}, {"storage_options": {}, "lr": 0.1, "token": None}),
])
def test_redact_masks_credentials_and_keeps_the_rest(config, masked):
    assert redact.redact(config) == masked


def test_log_params_never_records_a_credential(tmp_path):
    from sstparse import tracking

    cfg = TrackingConfig(tracking_uri=sqlite_uri(tmp_path), artifact_location=str(tmp_path))
    run_id = tracking.start_run(cfg, "masked")
    tracking.log_params(cfg, run_id, {"data": {"storage_options": {"key": "AKIA1", "secret": "s3cr3t"}},
                                      "tracking": {"tracking_uri": "http://u:pw@mlflow:5000"}, "api_token": "t0k"})
    params = tracking.client(cfg).get_run(run_id).data.params
    assert params == {"data.storage_options.key": "***", "data.storage_options.secret": "***",
                      "tracking.tracking_uri": "http://u:***@mlflow:5000", "api_token": "***"}
