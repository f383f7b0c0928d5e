"""Online serving with Ray Serve: ``serve run sstparse.serve:app model_uri=models:/sst-universal@champion``.

One deployment per model; its replicas each load the registered pyfunc once and answer

* ``POST /`` with an image, as the raw body or a multipart form field ``image``; parameters as query string or
  form fields: ``domain`` (which head; required when the model has several), ``flip_tta`` (true/false) and
  ``format``: ``png`` (default: the label map, one class index per pixel, the bytes ``sstparse predict`` writes
  as ``<name>.png``) or ``json`` (the domain, the size, and every predicted class with its pixel count);
* ``GET /heads``: the domains and their classes; ``GET /healthz``: the pinned model and its heads (Ray Serve's
  own ``GET /-/healthz`` says the proxy is up).

Requests are batched with ``@serve.batch`` (``max_batch_size``; 1 turns batching off). Every request is checked
before it joins a batch, so a bad one gets a 4xx naming the problem (400 not an image, bad parameter or unknown
domain with the model's heads; 413 body over ``max_body_mb``; 422 image too small) and never fails its batch or
the replica. The app's arguments (:class:`ServeArgs`) are validated with the field named; the model URI is pinned
to a version when the app is built, so every replica serves the same version.
"""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pydantic import Field
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sstparse import tracking
from sstparse.config import StrictModel, validate
from sstparse.data.shards import BadRecord, decode_image


class ServeArgs(StrictModel):
    """The app's arguments: ``serve run sstparse.serve:app key=value ...`` (or a Serve config file's ``args``)."""

    model_uri: str = Field(description="MLflow model URI (models:/sst-universal@champion, runs:/<id>/model).")
    tracking_uri: str | None = Field(None, description="Tracking/registry store; default $MLFLOW_TRACKING_URI, "
                                                       "else sqlite:///mlruns.db.")
    num_replicas: int = Field(1, ge=1, description="Replicas of the deployment.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (a fraction packs replicas on one GPU).")
    max_batch_size: int = Field(8, ge=1, description="Requests run together; 1 turns batching off.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="How long a batch waits to fill.")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests a replica holds at once (>= max_batch_size "
                                                            "for batches to fill).")
    max_body_mb: float = Field(10.0, gt=0, description="Larger request bodies get 413.")
    access_log: bool = Field(True, description="One log line per request (in the replica's log file, and the "
                                               "console of `serve run`).")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Job:
    image: np.ndarray
    domain: str
    flip_tta: bool


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def parse_flag(name: str, value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text not in _TRUE | _FALSE:
        raise RequestError(400, f"{name}: expected true or false, got {value!r}")
    return text in _TRUE


@serve.deployment
class Parser:
    """The deployment: the pyfunc loaded once per replica, requests checked one by one and parsed in batches."""

    def __init__(self, model_uri: str, tracking_uri: str | None, max_batch_size: int, batch_wait_timeout_s: float,
                 max_body_mb: float):
        self.model_uri = model_uri
        self.model = tracking.load_pyfunc_model(model_uri, tracking_uri)
        self.served = self.model.unwrap_python_model()
        self.max_body = int(max_body_mb * 2**20)
        self.parse_batch.set_max_batch_size(max_batch_size)
        self.parse_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.pool = ThreadPoolExecutor(1)  # the forward pass, off the event loop: requests keep arriving meanwhile

    def heads(self) -> dict[str, Any]:
        return {name: {"classes": list(h.classes)} for name, h in self.served.heads.items()}

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and path in ("heads", "healthz"):
            body = {"heads": self.heads()} if path == "heads" else {"status": "ok", "model": self.model_uri,
                                                                     "heads": sorted(self.served.heads)}
            return JSONResponse(body)
        try:
            if request.method != "POST":
                raise RequestError(405, f"{request.method} {request.url.path}: POST an image, or GET /heads")
            job, fmt = await self.read_request(request)
        except RequestError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        label = await self.parse_batch(job)
        if fmt == "json":
            return JSONResponse(describe(label, self.served.heads[job.domain]))
        buf = io.BytesIO()
        Image.fromarray(label).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"x-sstparse-domain": job.domain})

    async def read_request(self, request: Request) -> tuple[Job, str]:
        """The checked job and the response format; :class:`RequestError` names whatever is wrong."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise RequestError(413, f"body of {int(declared)} bytes is over the limit of {self.max_body}")
        fields: dict[str, Any] = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form() as form:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise RequestError(400, "multipart request without a file field 'image'")
                data = await upload.read()
                fields.update({k: v for k, v in form.items() if isinstance(v, str)})
        else:
            data = await request.body()
        if len(data) > self.max_body:
            raise RequestError(413, f"body of {len(data)} bytes is over the limit of {self.max_body}")
        if not data:
            raise RequestError(400, "empty body: POST the image bytes (or a multipart field 'image')")
        return self.check(data, fields), fields.get("format", "png")

    def check(self, data: bytes, fields: dict[str, Any]) -> Job:
        unknown = set(fields) - {"domain", "flip_tta", "format"}
        if unknown:
            raise RequestError(400, f"unknown parameter(s) {sorted(unknown)}; known: domain, flip_tta, format")
        if fields.get("format", "png") not in ("png", "json"):
            raise RequestError(400, f"format: expected png or json, got {fields['format']!r}")
        try:
            head = self.served.head(fields.get("domain"))
        except ValueError as err:
            raise RequestError(400, str(err).removeprefix("params: ")) from None
        try:
            image, _ = decode_image(data, "body")
        except BadRecord as err:
            raise RequestError(400, f"not an image: {err.reason}") from None
        if min(image.shape[:2]) < self.served.min_size:
            raise RequestError(422, f"image {image.shape[0]}x{image.shape[1]} is too small; both sides must be >= "
                                    f"{self.served.min_size} px")
        return Job(image, head.name, parse_flag("flip_tta", fields.get("flip_tta")))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def parse_batch(self, jobs: list[Job]) -> list[np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.parse_jobs, jobs)

    def parse_jobs(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Label maps of checked jobs, one pyfunc call per (domain, flip) group (it batches equal sizes)."""
        out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(jobs)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.domain, job.flip_tta), []).append(i)
        for (domain, flip), idx in groups.items():
            labels = self.model.predict([jobs[i].image for i in idx],
                                        params={"domain": domain, "flip_tta": flip, "batch_size": len(idx)})
            for i, label in zip(idx, labels):
                out[i] = label
        return out


def describe(label: np.ndarray, head: Any) -> dict[str, Any]:
    counts = np.bincount(label.ravel(), minlength=head.num_classes)
    return {"domain": head.name, "height": int(label.shape[0]), "width": int(label.shape[1]),
            "classes": [{"index": i, "name": head.classes[i], "pixels": int(n)} for i, n in enumerate(counts) if n]}


def app(args: dict[str, Any]) -> serve.Application:
    """The application builder ``serve run`` calls with its ``key=value`` arguments."""
    cfg = validate(ServeArgs, args, "sstparse.serve:app arguments")
    store = tracking.model_store(cfg.model_uri, cfg.tracking_uri)
    return Parser.options(
        num_replicas=cfg.num_replicas, max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        logging_config={"enable_access_log": cfg.access_log},
    ).bind(tracking.pinned_uri(cfg.model_uri, store), store, cfg.max_batch_size, cfg.batch_wait_timeout_s,
           cfg.max_body_mb)


# ----------------------------------------------------------------------------------------------- load test
@dataclass
class LoadResult:
    latencies_s: list[float]
    seconds: float
    errors: list[str]
    bodies: list[bytes]     # response bodies, in request order

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0


def load(url: str, bodies: Sequence[bytes], clients: int, per_client: int, params: dict[str, str],
         timeout_s: float = 60.0) -> LoadResult:
    """``clients`` threads, each POSTing ``per_client`` requests back to back (request k sends
    ``bodies[k % len(bodies)]``): a bounded load for the benchmark and the tests."""
    import requests

    n = clients * per_client
    latencies: list[float] = []  # of the answered requests (list.append is atomic across threads)
    answers, errors = [b""] * n, []

    def client(c: int) -> None:
        with requests.Session() as session:
            for j in range(per_client):
                k = c * per_client + j
                t0 = time.perf_counter()
                try:
                    r = session.post(url, params=params, data=bodies[k % len(bodies)], timeout=timeout_s)
                except requests.RequestException as err:
                    errors.append(f"request {k}: {type(err).__name__}: {err}")
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"request {k}: HTTP {r.status_code}: {r.text[:200]}")
                answers[k] = r.content

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return LoadResult(latencies, time.perf_counter() - start, errors, answers)
