"""The Ray Serve endpoint (sstparse.serve): answers equal the pyfunc's, bad requests get a 4xx naming the problem
and leave the replica serving, batching under a small concurrent load; and ``mlflow models serve`` of the same
registered model with the README's JSON payloads."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

from sstparse import tracking
from sstparse.config import ConfigError
from tests.serving import images, log_tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def _wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and (proc is None or proc.poll() is None):
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return log_tiny(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def endpoint(served, ray_session):
    from ray import serve

    from sstparse.serve import app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"model_uri": served.uri, "tracking_uri": served.cfg.tracking_uri, "num_cpus": 0.5,
                   "max_batch_size": 4, "batch_wait_timeout_s": 0.05, "max_body_mb": 0.05}),
              name="sstparse", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    _wait_until_up(f"{url}/healthz")
    yield url
    serve.shutdown()  # frees the replica's CPUs for the rest of the session's Ray tests


pytestmark = [pytest.mark.ray]


def test_answers_equal_the_pyfunc(served, endpoint):
    model = tracking.load_pyfunc_model(served.uri, served.cfg.tracking_uri)
    ims = images(5, [(64, 48), (40, 70)])
    health = requests.get(f"{endpoint}/healthz").json()
    assert health == {"status": "ok", "model": f"models:/{served.name}/1", "heads": ["syn_lip", "syn_ppp"]}
    heads = requests.get(f"{endpoint}/heads").json()["heads"]
    assert list(heads) == ["syn_lip", "syn_ppp"] and heads["syn_lip"]["classes"][0] == "background"
    assert requests.get(f"{endpoint}/-/healthz").status_code == 200  # Ray Serve's proxy

    for im, flip in zip(ims, [False, True]):
        expected = model.predict([im], params={"domain": "syn_ppp", "flip_tta": flip})[0]
        raw = requests.post(endpoint, params={"domain": "syn_ppp", "flip_tta": str(flip).lower()}, data=_png(im))
        assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), expected)
        form = requests.post(endpoint, files={"image": ("x.jpg", _png(im))},
                             data={"domain": "syn_ppp", "flip_tta": str(flip).lower(), "format": "json"})
        assert form.status_code == 200, form.text
        counts = np.bincount(expected.ravel(), minlength=len(heads["syn_ppp"]["classes"]))
        assert form.json() == {"domain": "syn_ppp", "height": im.shape[0], "width": im.shape[1], "classes": [
            {"index": i, "name": heads["syn_ppp"]["classes"][i], "pixels": int(n)} for i, n in enumerate(counts) if n]}


def test_bad_requests_get_4xx_and_the_replica_keeps_serving(endpoint):
    good = _png(images(1, [(48, 48)])[0])
    cases = [
        ({"domain": "syn_lip"}, b"plain text, not an image", 400, "not an image"),
        ({"domain": "lip"}, good, 400, "unknown domain 'lip'; this model has heads ['syn_lip', 'syn_ppp']"),
        ({}, good, 400, "'domain' is required"),
        ({"domain": "syn_lip", "flip_tta": "maybe"}, good, 400, "flip_tta: expected true or false"),
        ({"domain": "syn_lip", "format": "gif"}, good, 400, "format: expected png or json"),
        ({"domain": "syn_lip", "size": "9"}, good, 400, "unknown parameter(s) ['size']"),
        ({"domain": "syn_lip"}, _png(images(1, [(8, 8)])[0]), 422, "too small"),
        ({"domain": "syn_lip"}, b"\0" * 60_000, 413, "over the limit of 52428"),
        ({"domain": "syn_lip"}, b"", 400, "empty body"),
    ]
    for params, body, status, message in cases:
        r = requests.post(endpoint, params=params, data=body)
        assert (r.status_code, message in r.json()["error"]) == (status, True), (params, r.text)
    assert requests.post(endpoint, files={"file": ("x.png", good)}, data={"domain": "syn_lip"}).status_code == 400
    assert requests.get(f"{endpoint}/").status_code == 405
    assert requests.post(endpoint, params={"domain": "syn_lip"}, data=good).status_code == 200


def test_concurrent_load_is_batched_error_free_and_equal_to_the_pyfunc(served, endpoint):
    from sstparse.serve import load

    model = tracking.load_pyfunc_model(served.uri, served.cfg.tracking_uri)
    ims = images(7, [(48, 48), (56, 40), (48, 48)])
    expected = model.predict(ims, params={"domain": "syn_lip"})
    result = load(endpoint, [_png(im) for im in ims], clients=4, per_client=3, params={"domain": "syn_lip"})
    assert result.errors == [] and len(result.latencies_s) == 12
    for k, body in enumerate(result.bodies):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), expected[k % 3]), k
    assert result.percentile(99) >= result.percentile(50) > 0 and result.throughput > 0


def test_app_arguments_are_checked_with_the_field_named(served):
    from sstparse.serve import app

    with pytest.raises(ConfigError, match="max_batch_size"):
        app({"model_uri": served.uri, "tracking_uri": served.cfg.tracking_uri, "max_batch_size": "0"})
    with pytest.raises(ConfigError, match="replicas: unknown key"):
        app({"model_uri": served.uri, "replicas": "2"})


def test_mlflow_models_serve_takes_the_documented_payloads(served, tmp_path):
    """The README's two JSON payloads: image paths, and base64 image files (dataframe_split)."""
    ims = images(2, [(48, 48), (40, 56)])
    paths = []
    for i, im in enumerate(ims):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    port = _free_port()
    # The scoring server is `uvicorn`, started by name: the venv's bin on PATH, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.cfg.tracking_uri,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", served.uri, "--env-manager",
                             "local", "--host", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{url}/ping", proc)
        expected = tracking.load_pyfunc_model(served.uri, served.cfg.tracking_uri).predict(
            ims, params={"domain": "syn_lip"})
        by_path = requests.post(f"{url}/invocations", json={"inputs": paths, "params": {"domain": "syn_lip"}})
        assert by_path.status_code == 200, by_path.text
        b64 = [base64.b64encode(_png(im)).decode() for im in ims]
        by_bytes = requests.post(f"{url}/invocations", json={
            "dataframe_split": {"columns": ["image_b64"], "data": [[b] for b in b64]},
            "params": {"domain": "syn_lip"}})
        assert by_bytes.status_code == 200, by_bytes.text
        for answer in (by_path.json()["predictions"], by_bytes.json()["predictions"]):
            assert [np.asarray(a, np.uint8).tolist() for a in answer] == [e.tolist() for e in expected]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
