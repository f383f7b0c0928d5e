"""The MLflow tracking server of cluster/local/ under load: the script starts a real `mlflow server` (sqlite backend,
artifacts in a folder, free port on 127.0.0.1), several writer processes log through sstparse.tracking at the same
time (as concurrent Tune trials do), and every metric step must arrive, with no "database is locked" anywhere."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.raycli import BIN, REPO, MlflowServer, free_port

WRITERS, STEPS = 4, 200
SCRIPT = REPO / "cluster" / "local" / "mlflow-server.sh"
WRITER = Path(__file__).with_name("mlflow_writer.py")


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server.url, server.log, server.artifacts
    finally:
        server.stop()


def test_concurrent_writers_lose_no_metric(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    url, server_log, artifacts = mlflow_server
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    writers = [subprocess.Popen([sys.executable, str(WRITER), url, str(i), str(STEPS), str(barrier), str(WRITERS)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(WRITERS)]
    outputs = [w.communicate(timeout=400) for w in writers]
    said = "\n".join(out + err for out, err in outputs)
    assert all(w.returncode == 0 for w in writers), said[-5000:]
    assert "database is locked" not in said
    assert "database is locked" not in server_log.read_text()

    client = MlflowClient(tracking_uri=url)
    results = [next(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT ")) for out, _ in outputs]
    run_ids = [run_id for run_id, _ in results]
    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["writer"] == str(i)
        assert run.data.params == {"writer": str(i), "model.backbone": "tiny", "model.width": str(16 * i),
                                   "optim.lr": str(0.001 * (i + 1))}
        for key in ("loss", "lr"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(STEPS)), (run_id, key, len(history))
        # The server stored the artifact in its own destination folder (artifact URI mlflow-artifacts:/...).
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert [p.read_text() for p in artifacts.rglob(f"note-{i}.txt")] == [f"writer {i}\n"]
    elapsed = [float(t) for _, t in results]
    # Measured numbers for the README (pytest -s shows them): requests per second the server sustained.
    print(f"\n{WRITERS} writers x {STEPS} log_batch requests: {max(elapsed):.1f} s for the slowest writer, "
          f"{WRITERS * STEPS / max(elapsed):.0f} requests/s in all")


def test_a_taken_port_is_named_and_nothing_starts(tmp_path):
    """Another server on MLFLOW_PORT could answer /health for ours: the script refuses to start instead."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "SSTPARSE_CLUSTER_DIR": str(tmp_path),
           "MLFLOW_PORT": str(port)}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert f"port in use: MLFLOW_PORT={port}" in started.stderr, started.stderr
    assert not (tmp_path / "mlflow-server.pid").exists()
