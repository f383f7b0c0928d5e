"""``sstparse predict --ray`` (and ``jobs/predict.py`` under ``ray job submit``): batch prediction on Ray Data.

The same inputs, model and flags as :func:`sstparse.predict.predict`, and the same output bytes, spread over an
actor pool: each actor loads the model once and, per batch, reads and decodes its images, runs the pyfunc, and
writes the three files per image (its threads overlap the reads and writes of one batch). The driver lists the
inputs and the outputs already written; images whose three outputs exist are skipped unless ``overwrite``, so a
killed job re-run loses nothing it had finished (every file appears whole or not at all: see
:func:`sstparse.predict.write_outputs`). A bad image never stops the job: it is counted, and listed with its reason
in ``skipped.csv`` under the output folder (rewritten by every run, header only when nothing was skipped).

The model URI is pinned before the actors start (``models:/name@alias`` -> ``models:/name/<version>``), so a
promotion during a long job cannot give two actors two different models. The tracking store must be reachable from
every node (an http:// server on a cluster; a local sqlite file only on one machine).
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import ray

from sstparse import tracking
from sstparse.data.shards import BadRecord, filesystem
from sstparse.predict import Input, done_names, list_inputs, read, write_outputs

SKIPPED_FILE = "skipped.csv"


@dataclass
class BatchResult:
    written: int = 0
    already_done: int = 0                                          # outputs found and kept (no --overwrite)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (url, reason), also in skipped.csv
    seconds: float = 0.0
    actors: int = 1
    skipped_file: str = ""

    @property
    def images_per_s(self) -> float:
        return (self.written + len(self.skipped)) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        line = (f"predicted {self.written} image(s) in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s, "
                f"{self.actors} actor(s)); skipped {len(self.skipped)} bad image(s)")
        line += f" (listed in {self.skipped_file})" if self.skipped else ""
        if self.already_done:
            line += f"; {self.already_done} already done and kept (--overwrite redoes them)"
        return line


class Predictor:
    """One actor of the pool: the model loaded once, then batches of rows {url, path, name} -> rows
    {url, reason} ("" when the outputs were written)."""

    def __init__(self, model_uri: str, tracking_uri: str, params: dict[str, Any], out: str,
                 storage_options: dict | None, threads: int = 4):
        self.model = tracking.load_pyfunc_model(model_uri, tracking_uri)
        served = self.model.unwrap_python_model()
        self.head, self.min_size, self.params = served.head(params["domain"]), served.min_size, params
        self.storage_options = storage_options
        self.out_fs, self.out = filesystem(out, storage_options)
        self.pool = ThreadPoolExecutor(threads)

    def _read(self, url: str, path: str) -> np.ndarray | str:
        fs, inner = filesystem(path, self.storage_options)
        try:
            return read(Input(fs, inner, url, ""), self.min_size)
        except BadRecord as err:
            return err.reason

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = list(self.pool.map(self._read, batch["url"], batch["path"]))
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        labels = self.model.predict([decoded[i] for i in good], params=self.params) if good else []
        list(self.pool.map(lambda i, label: write_outputs(self.out_fs, self.out, batch["name"][i], decoded[i],
                                                          label, self.head), good, labels))
        reasons = ["" if isinstance(d, np.ndarray) else d for d in decoded]
        return {"url": batch["url"], "reason": np.asarray(reasons, dtype=object)}


def predict_ray(model_uri: str, inputs: Sequence[str], out: str, domain: str | None = None,
                flip_tta: bool = False, batch_size: int = 8, concurrency: int = 1,
                num_gpus_per_actor: float = 0.0, num_cpus_per_actor: float = 1.0, overwrite: bool = False,
                tracking_uri: str | None = None, storage_options: dict | None = None,
                progress: bool = True) -> BatchResult:
    """Parse every input image on a Ray Data actor pool of ``concurrency`` actors; see the module docstring."""
    if batch_size < 1 or concurrency < 1:
        raise ValueError(f"batch_size and concurrency must be >= 1, got {batch_size} and {concurrency}")
    start = time.perf_counter()
    items = list_inputs(inputs, storage_options)  # before anything loads: a typo fails fast
    store = tracking.model_store(model_uri, tracking_uri)
    model_uri = tracking.pinned_uri(model_uri, store)
    # The head check on the driver: an unknown domain is one clear error, not one per actor.
    head = tracking.load_pyfunc_model(model_uri, store).unwrap_python_model().head(domain)
    out_fs, out_path = filesystem(out, storage_options)
    done = set() if overwrite else done_names(out_fs, out_path)
    todo = [i for i in items if i.name not in done]
    result = BatchResult(already_done=len(items) - len(todo), actors=concurrency,
                         skipped_file=f"{str(out).rstrip('/')}/{SKIPPED_FILE}")
    if todo:
        # The actors get the output as an absolute URL: a relative path would resolve in their own working folder.
        result.skipped = _run(todo, model_uri, store, {"domain": head.name, "flip_tta": flip_tta,
                                                       "batch_size": batch_size}, out_fs.unstrip_protocol(out_path),
                              storage_options,
                              batch_size, concurrency, num_gpus_per_actor, num_cpus_per_actor, progress)
        result.written = len(todo) - len(result.skipped)
    _write_skipped(out_fs, posixpath.join(out_path, SKIPPED_FILE), result.skipped)
    result.seconds = time.perf_counter() - start
    return result


def _run(todo: Sequence[Input], model_uri: str, store: str, params: dict[str, Any], out: str,
         storage_options: dict | None, batch_size: int, concurrency: int, num_gpus: float, num_cpus: float,
         progress: bool) -> list[tuple[str, str]]:
    """The Ray Data part: rows -> actor pool -> the (url, reason) of every skipped image."""
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # read by a local instance Ray Data starts below
    ray.data.DataContext.get_current().enable_progress_bars = progress
    rows = [{"url": i.url, "path": i.fs.unstrip_protocol(i.path), "name": i.name} for i in todo]
    # Enough blocks for every actor to start early, few enough that a block still holds several batches.
    blocks = max(1, min(len(rows) // batch_size, 4 * concurrency))
    ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        Predictor, fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": store, "params": params,
                                          "out": out, "storage_options": storage_options},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=num_gpus, num_cpus=num_cpus)
    skipped = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        skipped += [(u, r) for u, r in zip(batch["url"], batch["reason"]) if r]
    return sorted(skipped)


def _write_skipped(fs, path: str, skipped: Sequence[tuple[str, str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "reason"])
    writer.writerows(skipped)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, text.getvalue().encode())
