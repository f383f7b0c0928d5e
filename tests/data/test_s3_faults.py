"""Nothing lost under flaky storage: shards and predictions written and read through a proxy that answers some
requests with 503 SlowDown or drops the connection (tests/s3proxy.py) are byte for byte those of a clean run, and
storage that cannot be used at all (wrong key, missing bucket, nothing listening) stops the command line with one
clear error naming the URL. No Ray."""

from __future__ import annotations

import socket
import sys
import time

import botocore.exceptions
import pyarrow.parquet as pq
import pytest
import s3fs

from sstparse.cli import run
from sstparse.data.convert import convert
from sstparse.data.shards import MANIFEST, filesystem, part_paths, s3_options, verify
from tests.data.fixtures import build_lip
from tests.s3proxy import FaultProxy
from tests.serving import images, log_tiny

pytestmark = pytest.mark.s3
PREFIX = "test_s3_faults"


@pytest.fixture(autouse=True)
def _fresh_s3fs():
    # s3fs caches filesystems by their arguments, not by the environment: one made while AWS_ENDPOINT_URL named a
    # proxy (or a wrong key) would be handed to the next test that configures S3 through the environment.
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def _env(monkeypatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Exit code and output of the console entry point (what `sstparse ...` runs), in this process. An exception
    escaping it would be the traceback a user sees, and fails the test."""
    monkeypatch.setattr(sys, "argv", ["sstparse", *map(str, args)])
    capsys.readouterr()
    try:
        run()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return build_lip(tmp_path_factory.mktemp("raw"), {"train": ["ok"] * 6 + ["gray_jpeg"], "val": ["ok"] * 3})


@pytest.fixture(scope="module")
def clean(raw, s3_server) -> tuple[str, dict]:
    """The conversion written straight to moto, one part per sample (many requests for the proxy to fault)."""
    root = f"s3://{s3_server.bucket}/{PREFIX}/clean"
    return root, convert("lip", raw.src, root, rows_per_part=1, storage_options=s3_server.storage_options)


def test_retry_policy_is_botocore_standard_unless_overridden(s3_server, monkeypatch):
    for key in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(key, raising=False)
    fs, _ = filesystem(f"s3://{s3_server.bucket}/{PREFIX}", s3_server.storage_options)
    assert fs.config_kwargs == {"connect_timeout": 3, "retries": {"mode": "standard", "total_max_attempts": 4}}
    mine = s3_options({"config_kwargs": {"retries": {"mode": "adaptive"}}, "anon": False})
    assert mine == {"anon": False, "config_kwargs": {"connect_timeout": 3, "retries": {"mode": "adaptive"}}}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # the environment's setting is left to botocore
    assert s3_options() == {"config_kwargs": {"connect_timeout": 3}}


def test_convert_through_faults_writes_the_clean_shards(raw, clean, s3_server, s3_proxy, monkeypatch, capsys):
    root = f"s3://{s3_server.bucket}/{PREFIX}/faulty"
    manifest = convert("lip", raw.src, root, rows_per_part=1, storage_options=s3_proxy.storage_options)
    assert manifest == clean[1]  # the same sha256 for every part as the conversion without faults
    assert verify(root, "lip", s3_server.storage_options) == []  # what landed, read without the proxy
    written = dict(s3_proxy.faults)
    s3_proxy.max_faults = s3_proxy.total_faults + 5  # a few for the reads too
    _env(monkeypatch, AWS_ENDPOINT_URL=s3_proxy.url)
    code, out = _cli(monkeypatch, capsys, "inspect", "--verify", root)
    assert code == 0 and f"verified: every part under {root} matches" in out, out
    print(f"faults while converting {written}, in all {dict(s3_proxy.faults)} of {s3_proxy.requests} requests")
    assert written.get("slowdown", 0) > 0 and written.get("drop", 0) > 0
    assert s3_proxy.total_faults > sum(written.values())


def test_read_back_through_faults_gives_the_clean_bytes(clean, s3_server, s3_proxy):
    root, manifest = clean
    urls = [f"{root}/lip/{MANIFEST}"] + [u for split in manifest["splits"]
                                         for u in part_paths(root, "lip", split, s3_proxy.storage_options)]
    for url in urls:
        direct, path = filesystem(url, s3_server.storage_options)
        flaky, _ = filesystem(url, s3_proxy.storage_options)
        with flaky.open(path, "rb") as f:  # as verify and the training reader read a part
            assert f.read() == direct.cat_file(path), url
        if url.endswith("part-00000.parquet"):  # and as pyarrow reads it (footer first, then ranges)
            assert pq.read_table(path, filesystem=flaky).equals(pq.read_table(path, filesystem=direct)), url
    print(f"faults while reading {dict(s3_proxy.faults)} of {s3_proxy.requests} requests")
    assert s3_proxy.total_faults > 0


def test_without_retries_the_faults_break_a_conversion(raw, s3_server, s3_proxy, monkeypatch):
    """The control: the proxy's faults are real, only the retries get a conversion through them."""
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own loop around botocore's, off too
    options = {**s3_proxy.storage_options, "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}
    with pytest.raises((OSError, botocore.exceptions.BotoCoreError)):
        convert("lip", raw.src, f"s3://{s3_server.bucket}/{PREFIX}/no-retries", rows_per_part=1,
                storage_options=options)
    print(f"faults without retries {dict(s3_proxy.faults)} of {s3_proxy.requests} requests")
    assert s3_proxy.total_faults > 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return log_tiny(tmp_path_factory.mktemp("served"))


def test_predict_s3_to_s3_through_faults_matches_a_clean_run(served, tmp_path, s3_server, s3_proxy, monkeypatch,
                                                             capsys):
    from PIL import Image

    base = f"{s3_server.bucket}/{PREFIX}/predict"
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    for i, im in enumerate(images(3)):
        Image.fromarray(im).save(tmp_path / f"im{i}.png")
        fs.put_file(str(tmp_path / f"im{i}.png"), f"{base}/in/sub{i % 2}/im{i}.png")
    args = ("predict", "--model", served.uri, "--tracking-uri", served.cfg.tracking_uri, "--domain", "syn_ppp",
            f"s3://{base}/in", "--batch-size", "2", "--out")
    for endpoint, out in ((s3_server.url, "clean"), (s3_proxy.url, "faulty")):
        _env(monkeypatch, AWS_ENDPOINT_URL=endpoint)
        code, text = _cli(monkeypatch, capsys, *args, f"s3://{base}/{out}")
        assert code == 0 and "wrote 3 image(s)" in text, text
    fs.invalidate_cache()
    clean = {p.split("/clean/", 1)[1]: fs.cat_file(p) for p in fs.find(f"{base}/clean")}
    faulty = {p.split("/faulty/", 1)[1]: fs.cat_file(p) for p in fs.find(f"{base}/faulty")}
    assert len(clean) == 9 and faulty == clean
    print(f"faults while predicting {dict(s3_proxy.faults)} of {s3_proxy.requests} requests")
    assert s3_proxy.total_faults > 0


# ----------------------------------------------------------------------------------------------- unusable storage
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrong_key(s3_server, monkeypatch) -> None:
    """A real IAM key with the wrong secret, and moto checking signatures (it accepts anything by default)."""
    import boto3
    import moto.settings

    iam = boto3.client("iam", endpoint_url=s3_server.url, region_name="us-east-1")
    name = f"s3-faults-{time.monotonic_ns()}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    _env(monkeypatch, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY="not-the-secret")


@pytest.mark.parametrize("problem", ["wrong key", "missing bucket", "unreachable"])
def test_unusable_storage_is_one_clear_error(problem, raw, tmp_path, s3_server, monkeypatch, capsys):
    from PIL import Image

    bucket = "no-such-bucket" if problem == "missing bucket" else s3_server.bucket
    root = f"s3://{bucket}/{PREFIX}/unusable"
    Image.fromarray(images(0)[0]).save(tmp_path / "local.png")
    expect = {"wrong key": "SignatureDoesNotMatch", "missing bucket": f"bucket '{bucket}' does not exist",
              "unreachable": "cannot reach the S3 endpoint"}[problem]
    if problem == "wrong key":
        _wrong_key(s3_server, monkeypatch)
    if problem == "unreachable":
        endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
        _env(monkeypatch, AWS_ENDPOINT_URL=endpoint)
        expect += f" {endpoint}"
    predict = ("predict", "--model", "models:/never-loaded@champion", "--domain", "syn_ppp")
    for args in (("convert", "--dataset", "lip", "--src", raw.src, "--out", root),
                 ("synth", "--out", root, "--domain", "syn_ppp", "--scale", "0.01"),
                 ("inspect", "--verify", root),
                 (*predict, root, "--out", tmp_path / "out"),
                 (*predict, tmp_path / "local.png", "--out", root)):
        start = time.monotonic()
        code, out = _cli(monkeypatch, capsys, *args)
        assert code != 0 and "Traceback" not in out, out
        assert f"{root}: " in out and expect in out, out
        assert time.monotonic() - start < 20  # retries are bounded: seconds, not minutes


def test_throttling_past_every_retry_names_the_url(s3_server, monkeypatch, capsys):
    """Writes that stay throttled: once botocore (one attempt here, AWS_MAX_ATTEMPTS=1, to take seconds) and s3fs
    (its own 5) stop retrying, `sstparse synth` ends with one error naming the part and the throttling."""
    root = f"s3://{s3_server.bucket}/{PREFIX}/throttled"
    with FaultProxy(s3_server.url, probability=1.0, max_in_a_row=10**6, max_faults=10**6, slowdown_share=1.0,
                    methods=frozenset({"PUT"})) as proxy:  # every write throttled, every read and listing through
        _env(monkeypatch, AWS_ENDPOINT_URL=proxy.url, AWS_MAX_ATTEMPTS="1")
        code, out = _cli(monkeypatch, capsys, "synth", "--out", root, "--domain", "syn_ppp", "--scale", "0.01")
    assert code != 0 and "Traceback" not in out, out
    assert f"{root}/syn_ppp/train/part-00000.parquet: " in out and "SlowDown (slow down) after every retry" in out, out
    assert proxy.faults["slowdown"] >= 2  # retried before giving up
