"""Shared pytest fixtures (keep generic; area-specific fixtures live next to their tests)."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import pytest


class S3Server(NamedTuple):
    url: str                 # http://127.0.0.1:<port>
    bucket: str              # an existing, empty-at-start bucket
    storage_options: dict    # for fsspec/s3fs (and sstparse's storage_options arguments)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 (a real HTTP endpoint, so s3fs/pyarrow code paths are the production ones)
    with one bucket. Tests share it: write under a prefix of your own (e.g. the test name).

    Its endpoint and fake credentials are put in the environment, as a cluster's nodes have them (a Kubernetes
    Secret, cluster/local/): AWS_ENDPOINT_URL for boto3/s3fs, MLFLOW_S3_ENDPOINT_URL for MLflow's artifact client.
    ``ray_session`` starts after this fixture, so every Ray process (Train controller and workers, Ray Data tasks)
    inherits them: an s3:// storage_path then works there without any option passed around."""
    from moto.server import ThreadedMotoServer
    import boto3

    env = pytest.MonkeyPatch()
    # Fake credentials and no instance-metadata lookup (it would hang on a machine outside EC2); keep any HTTP
    # proxy away from the local endpoint.
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost",
                       "no_proxy": "127.0.0.1,localhost"}.items():
        env.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        env.delenv(key, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env.setenv("AWS_ENDPOINT_URL", url)
    env.setenv("MLFLOW_S3_ENDPOINT_URL", url)
    bucket = "sstparse-test"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
    try:
        # s3fs takes the endpoint through client_kwargs, without a region_name there.
        yield S3Server(url, bucket, {"client_kwargs": {"endpoint_url": url}})
    finally:
        server.stop()
        env.undo()


@pytest.fixture
def s3_proxy(s3_server):
    """A seeded fault-injecting proxy (tests/s3proxy.py) in front of the session's moto server, faults on: some
    requests get 503 SlowDown or a dropped connection. Point a client at ``s3_proxy.url`` (or pass
    ``s3_proxy.storage_options``); ``s3_proxy.faults`` counts what it injected. At most 10 faults (raise
    ``max_faults`` for more): each costs the client a retry's backoff, about half a second."""
    from tests.s3proxy import FaultProxy

    with FaultProxy(s3_server.url, seed=0, probability=0.3, max_in_a_row=2, max_faults=10) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray instance for the whole test session (never one per test: a start costs about 20 s, minutes on
    a busy 2-core machine). Tests using it are marked ``@pytest.mark.ray``. It starts after ``s3_server`` so that its
    processes see the S3 environment."""
    import os

    import ray

    # Set before init so the raylet and every worker inherit them: local runs need no auth token (keep auth on
    # for clusters); progress bars would flood CI logs.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    # The Train controller polls its workers at this interval: Ray's default, 2 s, adds seconds to each tiny fit's
    # start, epochs and end (three tiny fits: 85 s instead of 66 s, 126 instead of 111 CPU-s; 1 s costs the same
    # as 0.2 s).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    for knob, value in QUIET_RAY.items():
        os.environ.setdefault(knob, value)
    # No node of this instance is ever drained (preemption notices: tests/cluster): each fit's watcher actor would
    # be one more process start (~2 s of CPU) for nothing.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    started = not ray.is_initialized()
    if started:
        from tests.raycli import free_port

        # The dashboard serves the state API, through which Ray Train's placement-group cleaner notices a
        # controller killed with its Tune trial (ASHA stopping it); without it the trial's CPUs leak. The cleaner
        # finds the API by RAY_API_SERVER_ADDRESS, else by looking for a Ray instance on the machine, which fails
        # when there are two (make test runs two test processes, each with an instance of its own: address="local",
        # or the second would join the first's): so the dashboard gets a port chosen here, named to every process.
        # Not in this process's own environment once started: here it would outrank the address given to any other
        # cluster's job client (tests/cluster).
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=port)
        finally:
            del os.environ["RAY_API_SERVER_ADDRESS"]
    yield
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(items):
    """Tests that run Ray jobs (a minute or more a file) first: `make test` hands whole files to its two processes
    in this order as each frees up, and the seconds-long unit tests then even out the two processes' ends."""
    items.sort(key=lambda item: not (item.get_closest_marker("ray") or item.get_closest_marker("cluster")))


# Settings of the suite's own Ray instance only (tests/cluster's clusters run with Ray's defaults). Nothing here reads
# Ray's Prometheus metrics, event-loop stats or the dashboard's per-process stats (its agent gathers them every 5 s),
# and no worker is wanted before a task asks for one: an idle instance then uses 0.066 instead of 0.11 of a core.
# (Not RAY_LOG_MONITOR_MANY_FILES_THRESHOLD=0, 0.006 of a core less: with it a Serve replica's access lines reached
# the console in two of three runs, in none of the four before; a new worker's output then reaches the driver up to
# half a second later, perhaps after the short test that caused it, outside its capture.) Serve replicas log to their
# files only, not also to stderr: Ray forwards a replica's stderr to the pytest process whenever it arrives, and its
# access lines landed in the middle of the progress dots (two of ten suite runs, 2026-12-03).
QUIET_RAY = {"RAY_enable_metrics_collection": "0", "RAY_event_stats": "0", "RAY_prestart_worker_first_driver": "0",
             "REPORTER_UPDATE_INTERVAL_MS": "60000", "RAY_SERVE_LOG_TO_STDERR": "0"}
SYNTH = ["syn_lip", "syn_cihp", "syn_atr", "syn_ppp"]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> str:
    """The four synthetic domains at 2% of their size (train and tune tests share it)."""
    from sstparse.data.generate import generate
    from sstparse.domains import load_domains

    root = str(tmp_path_factory.mktemp("shards"))
    domains = load_domains()
    generate(root, [domains[n] for n in SYNTH], seed=0, scale=0.02, rows_per_part=16, progress=False)
    return root
