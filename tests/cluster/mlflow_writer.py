"""One writer of tests/cluster/test_mlflow_server.py, run as its own process (as each Tune trial is): open a run
through sstparse.tracking, log params, wait for the other writers, log STEPS metric steps one request each, log one
artifact, close the run and print its id.

    python tests/cluster/mlflow_writer.py TRACKING_URI INDEX STEPS BARRIER_DIR WRITERS
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sstparse import tracking
from sstparse.config import TrackingConfig


def barrier(folder: Path, index: int, writers: int, timeout: float = 120) -> None:
    """Every writer logs its metrics at the same time: the point is concurrency, not import speed."""
    (folder / f"ready-{index}").touch()
    deadline = time.time() + timeout
    while len(list(folder.glob("ready-*"))) < writers:
        if time.time() > deadline:
            sys.exit(f"writer {index}: the other writers did not get ready in {timeout:.0f} s")
        time.sleep(0.05)


def main() -> None:
    uri, index, steps, folder, writers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), \
        int(sys.argv[5])
    cfg = TrackingConfig(tracking_uri=uri, experiment="load")
    run_id = tracking.start_run(cfg, f"writer-{index}", tags={"writer": str(index)})
    tracking.log_params(cfg, run_id, {"writer": index, "model": {"backbone": "tiny", "width": 16 * index},
                                      "optim": {"lr": 0.001 * (index + 1)}})
    barrier(folder, index, writers)
    t0 = time.perf_counter()
    for step in range(steps):
        tracking.log_metrics(cfg, run_id, {"loss": 1.0 / (step + 1) + index, "lr": 0.001 * step}, step=step)
    elapsed = time.perf_counter() - t0
    # An artifact through the server (it proxies uploads to its --artifacts-destination; the job needs no store).
    note = folder / f"note-{index}.txt"
    note.write_text(f"writer {index}\n")
    tracking.log_artifacts(cfg, run_id, [note], "notes")
    tracking.end_run(cfg, run_id)
    print(f"RESULT {run_id} {elapsed:.3f}")  # MLflow prints to stdout too ("View run ..."): mark our line


if __name__ == "__main__":
    main()
