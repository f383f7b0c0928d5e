"""The unified training stream: every configured domain's shards, mixed by ``domain_mix``,
decoded and augmented in Ray Data, and split across Ray Train workers. The only module with Ray Data API calls.

Epoch plan -- how the mix is realised
    N = ``epoch_size`` (default: the train count of the domains with a positive weight). Domain d contributes
    exactly n_d = round(N * w_d / sum(w)) samples (largest-remainder rounding, so the n_d add up to N). With c_d
    samples on disk: floor(n_d / c_d) full passes (every sample once per pass) plus a random subset of
    n_d mod c_d samples without replacement. So a scarce domain is oversampled with each sample repeated as evenly
    as possible, a large domain is subsampled with a fresh subset every epoch, and weight 0 excludes a domain
    (it keeps its index and its validation set).

Reading and mixing, without an all-to-all shuffle
    Each domain's planned samples (one pass after another, parts visited in a fresh random order) are cut into T
    contiguous chunks, T = ceil(N / task_rows); read task t takes chunk t of *every* domain, so every task holds
    the domains in the mix proportions. A task reads only the part files its chunks touch, shuffles its rows,
    decodes and augments them (Read and MapBatches fused into one Ray task) and yields one block per batch-sized
    chunk; tasks run in random order. So every block already mixes the domains in about the target proportions,
    and reading stays streaming: no barrier (a global ``random_shuffle`` would need the whole epoch read first),
    the first batch is ready after one chunk. The cost: a part may be read by a few tasks (compressed bytes only;
    each planned sample is decoded once). ``shuffle_buffer`` > 0 adds Ray's local shuffle in the consumer.

Randomness and epochs
    The plan of epoch e is a pure function of (``seed``, e); every sample's augmentation draws from
    ``np.random.default_rng([seed, e, domain, part, row, copy])``, so it does not depend on which task or worker
    runs it. e = ``start_epoch`` + the number of completed executions of the Dataset: Ray Data re-plans the read
    at every execution (each ``iter_*`` pass or Train epoch) and passes its DataContext, whose execution counter
    is the same one Ray's own ``RandomSeedConfig(reseed_after_execution=True)`` uses. After a restart from a
    checkpoint, pass ``start_epoch`` to continue the sequence. An execution abandoned before its end (a loop that
    breaks out early) does not count: the next one replays the same epoch. Not reproducible: the order in which
    concurrent tasks finish (and the optional local shuffle), i.e. which samples share a batch.

Batch format: what ``iter_train_batches`` yields
    image float32 (B, 3, S, S), ImageNet-normalised; label int64 (B, S, S), 255 = ignore (crop padding included);
    domain int64 (B,), index into ``cfg.domains``. The training Dataset's blocks hold the crops as uint8 (image
    (B, S, S, 3), label (B, S, S)): a fifth of the bytes through the object store, and no fresh float32 block for
    the read task to fault in page by page (1.8 ms of its 5.2 ms per 256 px sample). ``finish_batch`` normalises
    them on the consumer's device (bit-identical to ``augment.normalize``; on a GPU the arithmetic runs there and
    the host-to-device copy is a quarter of the size). Validation rows keep their original size: with batch_size=1
    (or ``iter_val_batches``, which returns lists) image float32 (1, 3, H, W), label int64 (1, H, W), domain (1,).
    ``DataStream(with_ids=True)`` adds a ``sample_id`` string column (use ``iter_batches``, or ``iter_val_batches``,
    since torch has no string tensors).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import uuid
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import Dataset, DataIterator
from ray.data.block import BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource import Datasource, ReadTask

from sstparse.data.config import DataConfig
from sstparse.data import augment as aug
from sstparse.data.shards import BadRecord, filesystem, part_paths, read_manifest
from sstparse.domains import LabelDomain

log = logging.getLogger(__name__)
Domains = Union[Mapping[str, LabelDomain], Sequence[LabelDomain]]

READ_COLUMNS = ["sample_id", "image", "label"]
PLAN = np.dtype([("domain", "i4"), ("part", "i4"), ("row", "i4"), ("copy", "i4")])


class BadRecordError(RuntimeError):
    """A record failed at read time under ``on_bad_record: error`` (one string arg, so it pickles through Ray)."""


@dataclass(frozen=True)
class DomainShards:
    """One domain's parts for one split, as listed in its manifest."""

    info: aug.DomainInfo
    weight: float
    paths: tuple[str, ...]
    rows: tuple[int, ...]
    sha256: tuple[str, ...]  # of each part's bytes, from the manifest: checked whenever a part is read

    @property
    def count(self) -> int:
        return sum(self.rows)


def resolve_shards(cfg: DataConfig, domains: Domains, split: str) -> list[DomainShards]:
    """Read every configured domain's manifest; errors name the domain and root."""
    domains, out = _as_mapping(domains), []
    for index, name in enumerate(cfg.domains):
        if name not in domains:
            raise KeyError(f"domain_mix names {name!r}, which is not among the loaded domains {sorted(domains)}")
        root = cfg.root_of(name)
        manifest = read_manifest(root, name, cfg.storage_options)
        paths = part_paths(root, name, split, cfg.storage_options)
        parts = manifest["splits"][split]["parts"]
        info = aug.DomainInfo.from_domain(domains[name], index)
        out.append(DomainShards(info, cfg.domain_mix[name], tuple(paths), tuple(p["rows"] for p in parts),
                                tuple(p["sha256"] for p in parts)))
    return out


# ----------------------------------------------------------------------------------------------- epoch plan
def epoch_counts(weights: list[float], counts: list[int], epoch_size: int | None = None) -> list[int]:
    """Samples per domain in one epoch: n_d = round(N * w_d / sum(w)), largest remainder so sum(n_d) == N."""
    for w, c in zip(weights, counts):
        if w > 0 and c == 0:
            raise ValueError("a domain with a positive weight has no training samples")
    n_total = epoch_size or sum(c for w, c in zip(weights, counts) if w > 0)
    exact = [n_total * w / sum(weights) for w in weights]
    n = [math.floor(x) for x in exact]
    for i in sorted(range(len(n)), key=lambda i: n[i] - exact[i])[: n_total - sum(n)]:
        n[i] += 1
    return n


def domain_sequence(shards: DomainShards, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` planned samples of one domain: full passes, then a random subset; parts in a fresh order per pass."""
    offsets = np.cumsum((0,) + shards.rows)
    full, rest = divmod(n, shards.count)
    passes = []
    for copy in range(full + (rest > 0)):
        order = rng.permutation(len(shards.rows))
        part = np.concatenate([np.full(shards.rows[p], p, np.int32) for p in order])
        row = np.concatenate([np.arange(shards.rows[p], dtype=np.int32) for p in order])
        if copy == full:  # the remainder pass: a subset, kept in pass order so a chunk touches few parts
            chosen = np.zeros(shards.count, bool)
            chosen[rng.choice(shards.count, rest, replace=False)] = True
            keep = chosen[offsets[part] + row]
            part, row = part[keep], row[keep]
        seq = np.empty(len(part), PLAN)
        seq["domain"], seq["part"], seq["row"], seq["copy"] = shards.info.index, part, row, copy
        passes.append(seq)
    return np.concatenate(passes) if passes else np.empty(0, PLAN)


def task_fractions(n_total: int, task_rows: int) -> np.ndarray:
    """Share of every domain's samples given to each read task, in execution order.

    ceil(N / task_rows) equal tasks, the last one cut into 1/2, 1/4, 1/8, 1/8: tasks run roughly in order, so
    the epoch ends on small tasks instead of one full task running while the other cores idle (a DataLoader's
    per-batch granularity has no such tail)."""
    n_big = max(1, math.ceil(n_total / task_rows))
    w = np.array([1.0] * (n_big - 1) + ([0.5, 0.25, 0.125, 0.125] if n_big >= 4 else [1.0]))
    return w / w.sum()


def plan_epoch(shards: list[DomainShards], counts: list[int], seed: int, epoch: int,
               task_rows: int) -> list[np.ndarray]:
    """The read tasks of one epoch: each a shuffled PLAN array holding every domain in the mix proportions."""
    frac = task_fractions(sum(counts), task_rows)
    tasks: list[list[np.ndarray]] = [[] for _ in frac]
    for sh, n in zip(shards, counts):
        if n:
            seq = domain_sequence(sh, n, np.random.default_rng([seed, epoch, sh.info.index, 1]))
            cuts = np.round(np.cumsum(frac)[:-1] * n).astype(int)
            for t, chunk in enumerate(np.split(seq, cuts)):
                tasks[t].append(chunk)
    rng = np.random.default_rng([seed, epoch, 2**20])
    shuffled = [rng.permutation(np.concatenate(t)) for t in tasks]
    n_tail = 4 if len(frac) >= 7 else 0  # the shrinking tail (see task_fractions) stays last
    order = list(rng.permutation(len(frac) - n_tail)) + list(range(len(frac) - n_tail, len(frac)))
    return [shuffled[i] for i in order]


# ----------------------------------------------------------------------------------------------- reading
def _read_part(path: str, sha256: str, storage_options: dict) -> pa.Table:
    """A part's rows, after checking its bytes against the manifest. Hashing the bytes the task reads anyway costs
    about 1 ms per MB (under 1% of decoding and augmenting them); a separate pass before training would read the
    whole dataset once more (on S3, one more epoch of traffic)."""
    fs, p = filesystem(path, storage_options)
    try:
        with fs.open(p, "rb") as f:
            data = f.read()
    except Exception as err:  # a missing/unreadable part is not a record: always an error, naming the file
        raise OSError(f"{path}: cannot read shard part ({type(err).__name__}: {err})") from None
    if (digest := hashlib.sha256(data).hexdigest()) != sha256:
        raise OSError(f"{path}: bytes do not match the manifest's sha256 ({digest[:12]}... != {sha256[:12]}...): "
                      f"the part changed after it was written; rewrite it (sstparse synth/convert) or restore it")
    try:
        return pq.read_table(pa.BufferReader(data), columns=READ_COLUMNS)
    except Exception as err:
        raise OSError(f"{path}: cannot read shard part ({type(err).__name__}: {err})") from None


def _read_plan(plan: np.ndarray, paths: dict[int, tuple[str, ...]], sha256: dict[int, tuple[str, ...]],
               storage_options: dict, block_rows: int, epoch: int) -> Iterator[pa.Table]:
    """Read task body: load the parts this plan touches, then yield its rows in plan order, ``block_rows`` at a time."""
    if not len(plan):  # a tail task of a small epoch (task_fractions) can round to no sample of any domain
        return
    keys, inverse = np.unique(plan["domain"].astype(np.int64) << 32 | plan["part"], return_inverse=True)
    tables = [_read_part(paths[d][p], sha256[d][p], storage_options)
              for d, p in ((int(k >> 32), int(k & 0xFFFFFFFF)) for k in keys)]
    starts = np.cumsum([0] + [t.num_rows for t in tables])[:-1]
    table = pa.concat_tables(tables)
    index = starts[inverse.ravel()] + plan["row"]
    sources = [f"{paths[d][p]}#row={r}" for d, p, r in zip(plan["domain"], plan["part"], plan["row"])]
    for i in range(0, len(plan), block_rows):
        sl = slice(i, i + block_rows)
        block = table.take(pa.array(index[sl]))
        yield block.append_column("source", pa.array(sources[sl], pa.string())) \
                   .append_column("domain", pa.array(plan["domain"][sl])) \
                   .append_column("part", pa.array(plan["part"][sl])) \
                   .append_column("row", pa.array(plan["row"][sl])) \
                   .append_column("copy", pa.array(plan["copy"][sl])) \
                   .append_column("epoch", pa.array(np.full(len(block), epoch, np.int32)))


def _execution_index(data_context) -> int:
    # Ray Data bumps DataContext._execution_idx after each successful execution and hands the context to
    # get_read_tasks at planning time; RandomSeedConfig(reseed_after_execution=True) relies on the same counter.
    # It is private, so tests/data/test_pipeline.py::test_epochs_differ_and_replay_from_start_epoch guards it.
    return int(getattr(data_context, "_execution_idx", 0) or 0)


class ShardPlanDatasource(Datasource):
    """Read tasks from an epoch plan (train) or one task per part in file order (val)."""

    def __init__(self, shards: list[DomainShards], counts: list[int] | None, seed: int, task_rows: int,
                 block_rows: int, storage_options: dict, start_epoch: int = 0):
        super().__init__()
        self.shards, self.counts, self.seed = shards, counts, seed
        self.task_rows, self.block_rows, self.storage_options = task_rows, block_rows, dict(storage_options)
        self.start_epoch = start_epoch

    def get_name(self) -> str:
        return "ShardPlan" if self.counts is not None else "ShardSplit"

    def plans(self, epoch: int) -> list[np.ndarray]:
        if self.counts is not None:
            return plan_epoch(self.shards, self.counts, self.seed, epoch, self.task_rows)
        out = []
        for sh in self.shards:
            for p, n in enumerate(sh.rows):
                plan = np.zeros(n, PLAN)
                plan["domain"], plan["part"], plan["row"] = sh.info.index, p, np.arange(n)
                out.append(plan)
        return out

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # The requested parallelism is ignored on purpose: the task layout *is* the mixing scheme.
        epoch = self.start_epoch + (_execution_index(data_context) if self.counts is not None else 0)
        paths = {sh.info.index: sh.paths for sh in self.shards}
        sha256 = {sh.info.index: sh.sha256 for sh in self.shards}
        return [ReadTask(functools.partial(_read_plan, plan, paths, sha256, self.storage_options, self.block_rows,
                                           epoch),
                         BlockMetadata(num_rows=len(plan), size_bytes=None, exec_stats=None, input_files=None),
                         per_task_row_limit=per_task_row_limit)
                for plan in self.plans(epoch)]


# ----------------------------------------------------------------------------------------------- bad records
BAD_RECORD_LOG = "sstparse_bad_records"


@ray.remote(num_cpus=0)
class BadRecordLog:
    """Collects the records skipped under ``on_bad_record: skip``, from every task of every stream of this Ray job.

    A named actor (``BAD_RECORD_LOG:<stream id>``), so any process of the job can read the report
    (:func:`bad_records`); the trainer's driver asks its own stream (:meth:`DataStream.bad_records`)."""

    def __init__(self):
        self._records: list[dict] = []

    def add(self, stream: str, records: list[dict]) -> None:
        self._records.extend({"stream": stream, **r} for r in records)

    def records(self, stream: str | None = None) -> list[dict]:
        return [r for r in self._records if stream is None or r["stream"] == stream]


def bad_records() -> list[dict]:
    """Every record skipped so far in this Ray job: stream, epoch, domain, sample_id, source, reason."""
    names = [n for n in ray.util.list_named_actors() if n.startswith(BAD_RECORD_LOG + ":")] \
        if ray.is_initialized() else []
    out: list[dict] = []
    for name in sorted(names):
        try:
            out += ray.get(ray.get_actor(name).records.remote())
        except (ValueError, ray.exceptions.RayActorError):  # its stream is gone, and its log with it
            continue
    return out


def _bad(err: BadRecord, batch: dict, i: int, info: aug.DomainInfo, on_bad: str) -> dict:
    if on_bad == "error":
        # The record and what is wrong with it come last: Ray Train shortens a worker's error to its head and tail.
        raise BadRecordError(f"bad record in domain {info.name} (sample {batch['sample_id'][i]}); set "
                             f"on_bad_record: skip to drop, count and report such records instead. Record: {err}")
    log.warning("skipping bad record %s", err)
    return {"epoch": int(batch["epoch"][i]), "domain": info.name, "sample_id": str(batch["sample_id"][i]),
            "source": err.source, "reason": err.reason}


def _report(records: list[dict], sink: tuple | None) -> None:
    if records:
        log_actor, stream = sink
        # Blocking on purpose: once the batch is consumed, the driver's report must already include these.
        ray.get(log_actor.add.remote(stream, records))


# ----------------------------------------------------------------------------------------------- map_batches
def _augment_block(batch: dict[str, np.ndarray], infos: dict[int, aug.DomainInfo], spec: aug.AugmentSpec,
                   seed: int, on_bad: str, sink, with_ids: bool) -> dict[str, np.ndarray]:
    """Decode + joint augmentation of some rows -> the training batch columns (module docstring)."""
    images, labels, keep, bad = [], [], [], []
    for i in range(len(batch["domain"])):
        info = infos[int(batch["domain"][i])]
        rng = aug.sample_rng(seed, int(batch["epoch"][i]), info.index, int(batch["part"][i]),
                             int(batch["row"][i]), int(batch["copy"][i]))
        try:
            img, lbl = aug.train_sample(batch["image"][i], batch["label"][i], info, spec, rng, batch["source"][i])
        except BadRecord as err:
            bad.append(_bad(err, batch, i, info, on_bad))
            continue
        images.append(img)
        labels.append(lbl)
        keep.append(i)
    _report(bad, sink)
    s = spec.crop_size
    out = {"image": np.stack(images) if images else np.empty((0, s, s, 3), np.uint8),
           "label": np.stack(labels) if labels else np.empty((0, s, s), np.uint8),
           "domain": batch["domain"][keep].astype(np.int64)}
    if with_ids:
        out["sample_id"] = batch["sample_id"][keep]
    return out


def _augment_rows(batch: dict[str, np.ndarray], block_rows: int, **kw) -> Iterator[dict[str, np.ndarray]]:
    """map_batches UDF over whatever the read hands over (batch_size=None keeps Read->MapBatches fused in one
    task); yields ``block_rows`` augmented rows at a time, so output streams and blocks map 1:1 onto batches."""
    for i in range(0, len(batch["domain"]), block_rows):
        yield _augment_block({k: v[i:i + block_rows] for k, v in batch.items()}, **kw)


def _decode_batch(batch: dict[str, np.ndarray], infos: dict[int, aug.DomainInfo], on_bad: str, sink,
                  with_ids: bool) -> dict[str, object]:
    """Validation: decode, check and normalise only; original sizes are kept (ragged columns when they differ)."""
    images, labels, keep, bad = [], [], [], []
    for i in range(len(batch["domain"])):
        info = infos[int(batch["domain"][i])]
        try:
            img, lbl = aug.decode_pair(batch["image"][i], batch["label"][i], info, batch["source"][i])
        except BadRecord as err:
            bad.append(_bad(err, batch, i, info, on_bad))
            continue
        images.append(aug.normalize(img))
        labels.append(lbl.astype(np.int64))
        keep.append(i)
    _report(bad, sink)
    out = {"image": images, "label": labels, "domain": batch["domain"][keep].astype(np.int64)}
    if with_ids:
        out["sample_id"] = batch["sample_id"][keep]
    return out


# ----------------------------------------------------------------------------------------------- public API
class DataStream:
    """Builds the training Dataset and the per-domain validation Datasets of one :class:`DataConfig`.

    Reads the manifests once (driver side); nothing is read from the parts until a Dataset is iterated.
    """

    def __init__(self, cfg: DataConfig, domains: Domains, start_epoch: int = 0, with_ids: bool = False):
        domains = _as_mapping(domains)
        cfg = cfg.absolute()  # the Datasets' tasks read the parts from other processes' working folders
        self.cfg, self.domains, self.start_epoch, self.with_ids = cfg, domains, start_epoch, with_ids
        self.train_shards = resolve_shards(cfg, domains, "train")
        for sh in self.train_shards:
            if sh.weight > 0 and sh.count == 0:
                raise ValueError(f"domain {sh.info.name}: weight {sh.weight} but no training samples under "
                                 f"{cfg.root_of(sh.info.name)}")
        self.counts = epoch_counts([s.weight for s in self.train_shards], [s.count for s in self.train_shards],
                                   cfg.epoch_size)
        self.infos = {s.info.index: s.info for s in self.train_shards}
        jitter = cfg.color_jitter
        self.spec = aug.AugmentSpec(cfg.crop_size, tuple(cfg.scale_range), cfg.flip, jitter.brightness,
                                    jitter.contrast, jitter.saturation)
        self._stream_id = uuid.uuid4().hex[:12]

    @functools.cached_property
    def _sink(self) -> tuple | None:
        """(log actor, stream id) under ``on_bad_record: skip``; created with the first Dataset (needs Ray)."""
        if self.cfg.on_bad_record != "skip":
            return None
        # One log actor per stream, named after it: a shared get_if_exists actor could be handed out while the
        # last reference from an earlier stream is being dropped, and die under the new stream.
        name = f"{BAD_RECORD_LOG}:{self._stream_id}"
        return BadRecordLog.options(name=name).remote(), self._stream_id

    @property
    def block_rows(self) -> int:
        return self.cfg.block_rows or self.cfg.batch_size

    @property
    def epoch_size(self) -> int:
        return sum(self.counts)

    @property
    def domain_counts(self) -> dict[str, int]:
        """Samples each domain contributes to every epoch."""
        return {s.info.name: n for s, n in zip(self.train_shards, self.counts)}

    def train_source(self) -> ShardPlanDatasource:
        c = self.cfg
        return ShardPlanDatasource(self.train_shards, self.counts, c.seed, c.task_rows, self.block_rows,
                                   c.storage_options, self.start_epoch)

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """All planned samples of ``epoch`` (PLAN records), in task order; what the Dataset yields, as a multiset."""
        return np.concatenate(self.train_source().plans(epoch))

    def train_dataset(self) -> Dataset:
        """The mixed, augmented stream; pass it to ``TorchTrainer(datasets={"train": ...})``."""
        n_tasks = len(task_fractions(self.epoch_size, self.cfg.task_rows))
        ds = ray.data.read_datasource(self.train_source(), override_num_blocks=n_tasks)
        rows = self.block_rows
        # batch_size=None: a map with a batch size is not fused with the read (Ray keeps them as two operators,
        # with an extra object-store hop and scheduling round per block); the UDF does its own chunking.
        ds = ds.map_batches(_augment_rows, batch_size=None, batch_format="numpy",
                            fn_kwargs={"block_rows": rows, "infos": self.infos, "spec": self.spec,
                                       "seed": self.cfg.seed, "on_bad": self.cfg.on_bad_record, "sink": self._sink,
                                       "with_ids": self.with_ids})
        # Ray coalesces a task's outputs up to target_max_block_size (128 MiB) before emitting them: a whole task
        # of crops, so the first batch would wait for a whole task. Capping it at one chunk's arrays (uint8
        # image + uint8 label, plus the domain column) makes every yielded chunk its own block, streamed as soon as
        # it is made. (This is the Dataset's own sealed context; nothing global changes.)
        ds.context.target_max_block_size = rows * (self.cfg.crop_size ** 2 * (3 + 1) + 8)
        ds.context.execution_options.preserve_order = self.cfg.preserve_order
        return ds

    def val_datasets(self) -> dict[str, Dataset]:
        """One Dataset per configured domain (weight 0 included), rows in file order, original sizes."""
        return {sh.info.name: self._val([sh]) for sh in resolve_shards(self.cfg, self.domains, "val")}

    def val_dataset(self) -> Dataset:
        """Every configured domain's validation rows in one Dataset (domain after domain, file order; the `domain`
        column says whose). A Train job splits this one across its workers: each split dataset costs a split
        coordinator actor and a streaming execution, so one per domain multiplied that start-up cost."""
        return self._val(resolve_shards(self.cfg, self.domains, "val"))

    def _val(self, shards: list[DomainShards]) -> Dataset:
        src = ShardPlanDatasource(shards, None, 0, 1, self.block_rows, self.cfg.storage_options)
        ds = ray.data.read_datasource(src, override_num_blocks=sum(len(sh.rows) for sh in shards))
        return ds.map_batches(
            _decode_batch, batch_size=self.block_rows, batch_format="numpy",
            fn_kwargs={"infos": {sh.info.index: sh.info for sh in shards}, "on_bad": self.cfg.on_bad_record,
                       "sink": self._sink, "with_ids": self.with_ids})

    def bad_records(self) -> list[dict]:
        """Records this stream skipped so far (all epochs, train and val): epoch, domain, sample_id, source,
        reason. (Module-level ``bad_records()`` lists those of every stream of the job.)"""
        if self.cfg.on_bad_record != "skip" or "_sink" not in self.__dict__:  # no Dataset built: none skipped
            return []
        return ray.get(self._sink[0].records.remote(self._stream_id))


def set_verbose(verbose: bool) -> None:
    """Whether Ray Data prints each execution's start and plan (two INFO lines per epoch and validation set) and
    its per-operator progress bars (without a terminal each redraw is a new line: hundreds per epoch). Datasets
    built after this carry the setting to the processes that execute them."""
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = verbose
    ctx.enable_progress_bars = verbose


def _as_mapping(domains: Domains) -> Mapping[str, LabelDomain]:
    return domains if isinstance(domains, Mapping) else {d.name: d for d in domains}


# ----------------------------------------------------------------------------------------------- consumer side
def iter_train_batches(data: Dataset | DataIterator, cfg: DataConfig, device="auto", drop_last: bool = False,
                       prefetch_batches: int = 2) -> Iterator[dict]:
    """One epoch of training batches (module docstring) from a Dataset or a Train worker's shard."""
    buffer = max(cfg.shuffle_buffer, cfg.batch_size) if cfg.shuffle_buffer else None
    batches = data.iter_torch_batches(batch_size=cfg.batch_size, device=device, drop_last=drop_last,
                                      local_shuffle_buffer_size=buffer, prefetch_batches=prefetch_batches)
    return map(finish_batch, batches)


def finish_batch(batch: dict) -> dict:
    """uint8 crops (image (B, S, S, 3), label (B, S, S)) -> the training batch (module docstring), on the batch's
    device: float32 (B, 3, S, S) ImageNet-normalised with the same float32 operations as ``augment.normalize``
    (so bit-identical to it), int64 labels. Other columns pass through."""
    import torch  # lazily, as in ValCollate

    image = batch["image"].permute(0, 3, 1, 2).contiguous().float()  # uint8 copy to CHW first: 1 byte a value
    image.sub_(torch.from_numpy(aug.MEAN).to(image.device)[:, None, None])
    image.mul_(torch.from_numpy(1.0 / aug.STD).to(image.device)[:, None, None])
    return {**batch, "image": image, "label": batch["label"].long()}


class ValCollate(NumpyBatchCollateFn):
    """Validation batches of any size, original image sizes kept: lists of float32 (3, H, W) images and int64
    (H, W) labels, domain int64 (B,), and sample_id list[str] when the stream has ids."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch  # lazily: Ray workers import this module for the map functions and never need torch

        with warnings.catch_warnings():  # Ray hands out read-only views of its buffers; nothing here writes
            warnings.simplefilter("ignore", UserWarning)
            out = {"image": [torch.from_numpy(np.asarray(im)) for im in batch["image"]],
                   "label": [torch.from_numpy(np.asarray(lb)) for lb in batch["label"]],
                   "domain": torch.from_numpy(np.asarray(batch["domain"]))}
        if "sample_id" in batch:
            out["sample_id"] = [str(x) for x in batch["sample_id"]]
        return out


def iter_val_batches(data: Dataset | DataIterator, batch_size: int = 8) -> Iterator[dict]:
    return data.iter_torch_batches(batch_size=batch_size, collate_fn=ValCollate(), prefetch_batches=1)
