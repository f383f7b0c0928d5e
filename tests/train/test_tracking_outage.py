"""The MLflow server goes away mid-training (the real server of cluster/local/, stopped by its script as a restart or
an outage would): training goes on, nothing logged meanwhile is lost, and when the server never comes back the job
still finishes, keeps its checkpoints and names the file holding what MLflow did not take."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sstparse import tracking
from sstparse.train import checkpoints
from sstparse.train.job import format_result
from sstparse.train.trainer import fit
from tests.raycli import MlflowServer, until_captured
from tests.stores import sqlite_uri
from tests.train.conftest import tiny_job

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    # A migrated store (tests.stores): the first start's migrations are tests/cluster/test_mlflow_server.py's.
    server = MlflowServer(folder, backend=sqlite_uri(folder, "mlflow.db"))
    server.start()
    yield server
    server.stop()


def outage_job(root: str, tmp_path: Path, server: MlflowServer, name: str, epochs: int, wait_s: float):
    return tiny_job(root, tmp_path, train={"name": name, "epochs": epochs, "num_workers": 1},
                    tracking={"tracking_uri": server.url, "artifact_location": None, "register_as": f"sst-{name}",
                              "request_timeout_s": 5, "outage_wait_s": wait_s})


def when_checkpoints(folder: Path, count: int, then, timeout: float = 300) -> threading.Thread:
    """Run ``then()`` once ``count`` checkpoints are in ``folder`` (epoch ``count``'s metrics were sent before its
    checkpoint was written)."""
    def watch():
        deadline = time.monotonic() + timeout
        while len(list(folder.glob("checkpoint_*/meta.json"))) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        then()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def steps(job, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in tracking.client(job.tracking).get_metric_history(run_id, key))


def test_metrics_logged_while_the_server_is_down_reach_the_run(ray_session, tiny_shards, tmp_path, server, capfd):
    job = outage_job(tiny_shards, tmp_path, server, "outage", epochs=3, wait_s=300)
    folder = tmp_path / "ray_results" / "outage"
    down = when_checkpoints(folder, 1, server.stop)
    up = when_checkpoints(folder, 2, lambda: (down.join(), server.start()))
    result = fit(job)
    up.join()
    seen = until_captured(capfd, "kept in")
    assert f"[tracking] {server.url} did not answer" in seen and "sent with the next epoch's" in seen
    # Every epoch's values reached the run, which then finished normally: model logged and registered.
    assert steps(job, result.run_id, "train/loss") == [1, 2, 3]
    assert steps(job, result.run_id, "val/mean_miou") == [1, 2, 3]
    assert tracking.run_status(job.tracking, result.run_id) == "FINISHED"
    assert result.registered_version == "1" and result.unsent_metrics is None
    assert not (folder / checkpoints.UNSENT_FILE).exists()


def test_a_server_that_never_returns_leaves_the_values_beside_the_checkpoints(ray_session, tiny_shards, tmp_path,
                                                                                server, capsys):
    job = outage_job(tiny_shards, tmp_path, server, "gone", epochs=3, wait_s=2)
    folder = tmp_path / "ray_results" / "gone"
    down = when_checkpoints(folder, 1, server.stop)
    try:
        result = fit(job)
    finally:
        down.join()  # a busy machine may still be stopping the server when the 3 tiny epochs are done
        server.start()  # the module's other tests need it; the job below is its comeback
    kept = checkpoints.read_unsent(str(folder / checkpoints.UNSENT_FILE))
    assert result.unsent_metrics == str(folder / checkpoints.UNSENT_FILE)
    assert sorted({r["step"] for r in kept if r.get("key") == "train/loss"}) == [2, 3]
    assert result.registered_version is None and result.unsent_metrics in format_result(result)
    _, model, meta = checkpoints.load_model(Path(result.checkpoint_path))  # the checkpoints are intact
    assert meta["epoch"] == 3 and meta["mlflow_run_id"] == result.run_id
    assert steps(job, result.run_id, "train/loss") == [1]  # what reached MLflow before it went

    # Once the server answers, the same job again trains no further (no workers: its result is read from storage),
    # sends what was kept and registers the model.
    capsys.readouterr()
    again = fit(job)
    assert "[restore] gone: its checkpoints hold all 3 epoch(s), nothing to train" in capsys.readouterr().out
    assert again.run_id == result.run_id and again.history == []
    assert steps(job, result.run_id, "train/loss") == [1, 2, 3]
    assert again.registered_version == "1" and again.unsent_metrics is None
    assert tracking.run_status(job.tracking, result.run_id) == "FINISHED"
    assert not (folder / checkpoints.UNSENT_FILE).exists()
