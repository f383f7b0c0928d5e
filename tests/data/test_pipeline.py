"""The Ray Data training stream: domain mix per epoch, epochs and seeding, 2-worker sharding, validation sets,
bad records, S3 roots. The epoch-plan arithmetic is tested without Ray."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sstparse.config import ConfigError, validate
from sstparse.data.config import DataConfig
from sstparse.data.generate import generate
from sstparse.data.pipeline import (PLAN, DataStream, _read_plan, bad_records, epoch_counts, iter_train_batches,
                                    iter_val_batches, task_fractions)
from sstparse.domains import load_domains
from tests.data.fixtures import crafted_root

DOMAINS = load_domains()
NAMES = ["syn_lip", "syn_atr", "syn_ppp", "syn_cihp"]
SCALE = 0.04  # train: lip 80, atr 60, ppp 12, cihp 60; val: 8, 8, 4, 8


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("shards"))
    # 16 rows per part: several parts per domain, so plans span parts and tasks share parts.
    generate(path, [DOMAINS[n] for n in NAMES], scale=SCALE, rows_per_part=16, progress=False)
    return path


def cfg_for(root: str, mix: dict, **kw) -> DataConfig:
    return DataConfig(**{"domain_mix": mix, "root": root, "crop_size": 64, "batch_size": 8, "block_rows": 8,
                         "task_rows": 48, **kw})


def ids_of(root: str, name: str, split: str) -> list[str]:
    return pq.read_table(f"{root}/{name}/{split}", columns=["sample_id"]).column(0).to_pylist()


def plan_ids(stream: DataStream, epoch: int) -> collections.Counter:
    """The sample ids an epoch must deliver, as a multiset, from the plan and the parts' sample_id columns."""
    return collections.Counter(planned_ids(stream, epoch))


def planned_ids(stream: DataStream, epoch: int) -> list[str]:
    """The sample ids of an epoch's plan, in plan order (task after task)."""
    ids = {(s.info.index, p): pq.read_table(path, columns=["sample_id"]).column(0).to_pylist()
           for s in stream.train_shards for p, path in enumerate(s.paths)}
    return [ids[(int(d), int(p))][r] for d, p, r, _ in stream.epoch_plan(epoch)]


def one_epoch(data, cfg) -> list[dict]:
    """Numpy batches: streams built with_ids carry a string column, which torch tensors cannot hold."""
    return list(data.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"))


# ----------------------------------------------------------------------------------------------- no Ray
def test_epoch_counts_follow_weights_exactly():
    assert epoch_counts([0.5, 0.25, 0.25], [100, 10, 50], 200) == [100, 50, 50]
    n = epoch_counts([1, 1, 1], [10, 10, 10], 100)
    assert sum(n) == 100 and sorted(n) == [33, 33, 34]
    assert epoch_counts([1, 0, 3], [40, 7, 20]) == [15, 0, 45]  # N defaults to the included domains' total
    with pytest.raises(ValueError, match="no training samples"):
        epoch_counts([1, 1], [10, 0])


def test_config_validates_domain_mix():
    ok = validate(DataConfig, {"domain_mix": {"syn_lip": 2, "syn_ppp": 0}, "root": "/x"}, "c.yaml")
    assert ok.domains == ["syn_lip", "syn_ppp"]
    for mix, msg in [({"syn_lip": 1, "nope": 1}, "unknown domain 'nope'"),
                     ({"syn_lip": -1, "syn_atr": 1}, "domain 'syn_lip': weight must be"),
                     ({"syn_lip": 0}, "at least one domain needs a positive weight")]:
        with pytest.raises(ConfigError, match=msg):
            validate(DataConfig, {"domain_mix": mix, "root": "/x"}, "c.yaml")
    with pytest.raises(ConfigError, match=r"no shard root for domain\(s\) \['syn_atr'\]"):
        validate(DataConfig, {"domain_mix": {"syn_lip": 1, "syn_atr": 1}, "roots": {"syn_lip": "/x"}}, "c.yaml")


def test_plan_oversamples_evenly_and_excludes_weight_zero(root):
    cfg = cfg_for(root, {"syn_lip": 0.5, "syn_atr": 0.0, "syn_ppp": 0.5})
    stream = DataStream(cfg, DOMAINS)
    assert stream.domain_counts == {"syn_lip": 46, "syn_atr": 0, "syn_ppp": 46}  # N = 80 + 12
    plan = stream.epoch_plan(0)
    assert len(plan) == 92 and 1 not in plan["domain"]
    per_sample = collections.Counter(zip(plan["domain"], plan["part"], plan["row"]))
    ppp = [c for (d, _, _), c in per_sample.items() if d == 2]
    assert len(ppp) == 12 and set(ppp) <= {3, 4}       # 46 = 3 full passes + 10: repeats as even as possible
    assert max(c for (d, _, _), c in per_sample.items() if d == 0) == 1   # subsampled: no repeats
    lip0, lip1 = ({(p, r) for d, p, r, _ in stream.epoch_plan(e) if d == 0} for e in (0, 1))
    assert lip0 != lip1                                  # a fresh subset every epoch
    assert np.array_equal(stream.epoch_plan(3), stream.epoch_plan(3))


# ----------------------------------------------------------------------------------------------- Ray
@pytest.mark.ray
def test_epoch_mix_fractions_and_batch_format(ray_session, root):
    """One epoch through plain iter_torch_batches (as the training loop consumes it)."""
    weights = {"syn_lip": 0.4, "syn_atr": 0.1, "syn_ppp": 0.3, "syn_cihp": 0.2}   # ppp: 12 samples -> 64
    cfg = cfg_for(root, weights)
    stream = DataStream(cfg, DOMAINS)
    batches = list(iter_train_batches(stream.train_dataset(), cfg))
    for b in batches:
        assert set(b) == {"image", "label", "domain"}
        assert b["image"].dtype == torch.float32 and tuple(b["image"].shape[1:]) == (3, 64, 64)
        assert b["label"].dtype == torch.int64 and tuple(b["label"].shape[1:]) == (64, 64)
        assert b["domain"].dtype == torch.int64 and len(b["domain"]) == len(b["image"]) <= 8
    assert -3 < float(torch.cat([b["image"] for b in batches]).mean()) < 3   # normalised
    labels = torch.cat([b["label"] for b in batches]).unique().tolist()
    assert set(labels) <= set(range(20)) | {255}
    domains = torch.cat([b["domain"] for b in batches]).numpy()
    assert len(domains) == stream.epoch_size == 212
    for i, (name, w) in enumerate(weights.items()):
        assert abs((domains == i).mean() - w) < 0.03, name
    assert sum(len(set(b["domain"].tolist())) > 1 for b in batches) > len(batches) // 2   # batches mix domains


@pytest.mark.ray
def test_epochs_differ_and_replay_from_start_epoch(ray_session, root):
    cfg = cfg_for(root, {"syn_lip": 1, "syn_atr": 1, "syn_ppp": 1}, epoch_size=60)   # ppp 12 -> 20: repeats
    stream = DataStream(cfg, DOMAINS, with_ids=True)
    ds = stream.train_dataset()

    def signature(batches):  # (sample, copy) -> checksum of its augmented label; copies are told apart by rank
        out, seen = {}, collections.Counter()
        for x in batches:
            for s, lb in zip(x["sample_id"], x["label"]):
                out[(s, seen[s])] = int((lb.astype(np.int64) * np.arange(lb.size).reshape(lb.shape) % 9973).sum())
                seen[s] += 1
        return out

    e0, e1 = signature(one_epoch(ds, cfg)), signature(one_epoch(ds, cfg))  # two executions = two epochs
    assert len(e0) == len(e1) == 60 and set(e0) != set(e1)
    names = {s: n for n in NAMES for s in ids_of(root, n, "train")}
    for sig, epoch in ((e0, 0), (e1, 1)):
        assert collections.Counter(s for s, _ in sig) == plan_ids(stream, epoch)   # exactly the plan
        assert collections.Counter(names[s] for s, _ in sig) == {"syn_lip": 20, "syn_atr": 20, "syn_ppp": 20}
    replay = DataStream(cfg, DOMAINS, start_epoch=1, with_ids=True).train_dataset()
    r1 = signature(one_epoch(replay, cfg))
    unique = [k for k in e1 if k[1] == 0 and (k[0], 1) not in e1]   # copies' order within a sample may differ
    assert len(unique) >= 40 and all(r1[k] == e1[k] for k in unique)   # same samples, same augmentation
    assert collections.Counter(r1.values()) == collections.Counter(e1.values())


def _train_loop(config):
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    seen = [[str(s) for b in shard.iter_batches(batch_size=8, batch_format="numpy") for s in b["sample_id"]]
            for _ in range(2)]
    rank = ray.train.get_context().get_world_rank()
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump(seen, f)


@pytest.mark.ray
def test_two_train_workers_get_disjoint_complete_shards(ray_session, root, tmp_path):
    """Real Ray Train (TorchTrainer, 2 workers, get_dataset_shard), not a hand-made streaming_split: that is the
    path training takes, including how Train re-executes the dataset every epoch. ~20 s on 2 cores."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = cfg_for(root, {"syn_lip": 0.5, "syn_cihp": 0.5}, epoch_size=60)   # subsampled: no repeats in an epoch
    stream = DataStream(cfg, DOMAINS, with_ids=True)
    TorchTrainer(_train_loop, train_loop_config={"cfg": cfg, "out": str(tmp_path)},
                 datasets={"train": stream.train_dataset()},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="shards")).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    names = {n: set(ids_of(root, n, "train")) for n in ("syn_lip", "syn_cihp")}
    epochs = []
    for e in range(2):
        a, b = ranks[0][e], ranks[1][e]
        assert len(a) == len(set(a)) == 30 and len(b) == len(set(b)) == 30
        assert not set(a) & set(b)                       # disjoint
        epoch = set(a) | set(b)
        assert collections.Counter(epoch) == plan_ids(stream, e)                        # complete
        assert len(epoch & names["syn_lip"]) == len(epoch & names["syn_cihp"]) == 30   # in the mix
        epochs.append(epoch)
    assert epochs[0] != epochs[1]                         # Train's second pass is the next epoch's plan


@pytest.mark.ray
def test_validation_keeps_original_sizes(ray_session, root, tmp_path):
    cfg = cfg_for(root, {"syn_lip": 1, "syn_ppp": 0})
    vals = DataStream(cfg, DOMAINS, with_ids=True).val_datasets()
    assert set(vals) == {"syn_lip", "syn_ppp"}          # weight 0 still has a validation set
    for name, ds in vals.items():
        style = DOMAINS[name].card.synthetic.style
        batches = list(iter_val_batches(ds, batch_size=3))
        assert sorted(s for b in batches for s in b["sample_id"]) == sorted(ids_of(root, name, "val"))
        for b in batches:
            assert all(tuple(im.shape) == (3, style.height, style.width) for im in b["image"])
            assert all(tuple(lb.shape) == (style.height, style.width) for lb in b["label"])
            assert (b["domain"] == cfg.domains.index(name)).all()
            assert b["image"][0].dtype == torch.float32 and b["label"][0].dtype == torch.int64
    # The training job's one validation dataset: every domain's rows, each with its domain index.
    merged = list(iter_val_batches(DataStream(cfg, DOMAINS, with_ids=True).val_dataset(), batch_size=1))
    by_domain = {n: sorted(b["sample_id"][0] for b in merged if int(b["domain"][0]) == cfg.domains.index(n))
                 for n in cfg.domains}
    assert by_domain == {n: sorted(ids_of(root, n, "val")) for n in cfg.domains}
    # as the training loop reads it: plain iter_torch_batches, one image at a time
    first = next(iter(DataStream(cfg, DOMAINS).val_datasets()["syn_ppp"].iter_torch_batches(batch_size=1)))
    assert set(first) == {"image", "label", "domain"}
    assert first["image"].shape == (1, 3, 224, 224) and first["label"].shape == (1, 224, 224)
    assert first["image"].dtype == torch.float32 and first["label"].dtype == torch.int64
    sizes = [(20, 30), (33, 17), (20, 30), (41, 41), (25, 26)]   # a real dataset's sizes vary within a domain
    ragged = crafted_root(tmp_path, sizes, {})
    got = {s: tuple(lb.shape) for b in iter_val_batches(
        DataStream(cfg_for(ragged, {"syn_ppp": 1}), DOMAINS, with_ids=True).val_datasets()["syn_ppp"], batch_size=2)
        for s, lb in zip(b["sample_id"], b["label"])}
    assert got == {f"val-{i}": hw for i, hw in enumerate(sizes)}


@pytest.mark.ray
def test_bad_record_error_names_the_record(ray_session, tmp_path):
    bad_root = crafted_root(tmp_path, [(24, 32)] * 6, {2: "image"})
    cfg = cfg_for(bad_root, {"syn_ppp": 1})
    with pytest.raises(Exception, match=r"bad record in domain syn_ppp \(sample train-2\).*"
                                        r"Record: \S*syn_ppp/train/part-00000\.parquet#row=2: undecodable image"):
        one_epoch(DataStream(cfg, DOMAINS).train_dataset(), cfg)
    # A part whose bytes changed after the manifest was written is not a record: always an error, naming the file,
    # before any of its rows is decoded -- even when skipping bad records. So is a part that cannot be read.
    stream = DataStream(cfg_for(bad_root, {"syn_ppp": 1}, on_bad_record="skip"), DOMAINS)
    part = tmp_path / "syn_ppp" / "train" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit that parquet itself might not notice
    part.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"syn_ppp/train/part-00001\.parquet: bytes do not match the manifest's "
                                        r"sha256"):
        one_epoch(stream.train_dataset(), stream.cfg)
    part.unlink()
    with pytest.raises(Exception, match=r"syn_ppp/train/part-00001\.parquet: cannot read shard part"):
        one_epoch(stream.train_dataset(), stream.cfg)


@pytest.mark.ray
def test_bad_records_skipped_counted_and_reported(ray_session, tmp_path):
    bad_root = crafted_root(tmp_path, [(24, 32)] * 10, {2: "image", 7: "label"})
    cfg = cfg_for(bad_root, {"syn_ppp": 1}, on_bad_record="skip")
    stream = DataStream(cfg, DOMAINS, with_ids=True)
    seen = [s for b in one_epoch(stream.train_dataset(), cfg) for s in b["sample_id"]]
    assert sorted(seen) == sorted(f"train-{i}" for i in range(10) if i not in (2, 7))
    report = sorted(stream.bad_records(), key=lambda r: r["sample_id"])
    assert [r["sample_id"] for r in report] == ["train-2", "train-7"]
    assert "undecodable image" in report[0]["reason"] and "label values [40]" in report[1]["reason"]
    assert report[0]["source"].endswith("part-00000.parquet#row=2") and report[0]["epoch"] == 0
    assert report[1]["source"].endswith("part-00001.parquet#row=3")
    # the job-wide log (what a trainer's driver reads without holding the stream) has them too
    assert [r for r in bad_records() if r["stream"] == report[0]["stream"]] == stream.bad_records()


@pytest.mark.ray
@pytest.mark.s3
def test_stream_reads_s3_root(ray_session, s3_server):
    # Ray workers started before the S3 fixture set its env: hand them the credentials explicitly.
    opts = {**s3_server.storage_options, "key": "testing", "secret": "testing"}
    s3_root = f"s3://{s3_server.bucket}/pipeline"
    generate(s3_root, [DOMAINS["syn_ppp"]], scale=0.02, rows_per_part=4, storage_options=opts, progress=False)
    cfg = cfg_for(s3_root, {"syn_ppp": 1}, storage_options=opts, epoch_size=10)
    stream = DataStream(cfg, DOMAINS)
    assert sum(len(b["domain"]) for b in one_epoch(stream.train_dataset(), cfg)) == 10
    assert sum(len(b["label"]) for b in iter_val_batches(stream.val_datasets()["syn_ppp"])) == 2



def test_a_small_epoch_plans_empty_tail_tasks_that_read_nothing():
    # 16 samples in tasks of 4: the last task is cut into 1/2, 1/4, 1/8, 1/8 of 4 rows, and the 1/8s round to none
    fractions = task_fractions(16, 4)
    assert len(fractions) == 7 and min(np.round(fractions * 16)) == 0
    assert list(_read_plan(np.empty(0, PLAN), {}, {}, {}, block_rows=4, epoch=0)) == []


@pytest.mark.ray
def test_preserve_order_delivers_the_plan_in_order(ray_session, root):
    # Thirteen read tasks racing on the session's CPUs: without preserve_order blocks come as tasks finish (in
    # plan order in about half the epochs here); with it, in plan order, every epoch, so the same job and seed see
    # the same batches.
    for preserve, epochs in ((True, 3), (False, 1)):
        cfg = cfg_for(root, {"syn_lip": 1, "syn_atr": 1}, epoch_size=80, task_rows=8, preserve_order=preserve)
        stream = DataStream(cfg, DOMAINS, with_ids=True)
        ds = stream.train_dataset()
        for epoch in range(epochs):
            seen = [str(s) for b in one_epoch(ds, cfg) for s in b["sample_id"]]
            planned = planned_ids(stream, epoch)
            assert (seen == planned) if preserve else (sorted(seen) == sorted(planned)), (preserve, epoch)
