"""The registry a person browses: each version's description and tags, one layout per name, the first version
promoted to champion at once, and promotion with no champion measured against the best registered version."""

from __future__ import annotations

import pytest

from sstparse import export, registry, tracking
from sstparse.data.shards import read_manifest
from sstparse.domains import load_domains
from sstparse.model.sst import inference_model
from sstparse.promote import promote, settle_new_version
from sstparse.config import TrackingConfig
from tests.serving import HEADS, tiny_job, tiny_model
from tests.stores import sqlite_uri


def _cfg(tmp_path) -> TrackingConfig:
    return TrackingConfig(tracking_uri=sqlite_uri(tmp_path), artifact_location=str(tmp_path / "a"),
                          experiment="registry")


def _register(cfg, name: str, root: str, seed: int = 0, score: float | None = 0.2, heads=HEADS) -> str:
    """A tiny model registered as training registers it: logged, then described from its checkpoint's meta."""
    run = tracking.start_run(cfg, f"train-{seed}")
    version = export.log_pyfunc_model(cfg, run, inference_model(tiny_model(heads, seed=seed)), register_as=name)
    job = tiny_job(heads).model_copy(update={"data": tiny_job(heads).data.model_copy(update={"root": root})})
    metrics = {f"val/{h}/miou": 0.1 for h in heads} | ({"val/mean_miou": score} if score is not None else {})
    layout = registry.layout_of([load_domains()[h] for h in heads])
    card = registry.version_card(job, layout, {"epoch": 3, "metrics": metrics}, run, f"/ckpt/{seed}", name,
                                 command="python jobs/train.py --config x.yaml")
    registry.describe(cfg, name, version, card, layout)
    return version


def test_a_version_says_what_it_parses_from_what_and_how_to_call_it(tiny_shards, tmp_path):
    cfg = _cfg(tmp_path)
    version = _register(cfg, "sst-card", tiny_shards)
    c = tracking.client(cfg)
    v = c.get_model_version("sst-card", version)
    assert "syn_lip (20 classes), syn_ppp (7 classes)" in v.description
    n = read_manifest(tiny_shards, "syn_ppp")["splits"]["train"]["count"]
    assert "| syn_ppp | 7 | 10.0% |" in v.description  # head, classes, validation mIoU
    assert f"syn_ppp ({n} images, weight 1)" in v.description
    assert "`python jobs/train.py --config x.yaml`" in v.description and "models:/sst-card@champion" in v.description
    assert {"mode", "backbone", "heads", "layout", "git_commit", "data_root", "source_run", "checkpoint",
            "objective", "objective_score"} <= set(v.tags)
    assert v.tags["mode"] == "universal" and v.tags["checkpoint"] == "/ckpt/0" and v.tags["objective_score"] == "0.2000"
    assert v.tags["data_root"] == tiny_shards and v.tags["git_commit"] != ""
    assert "| syn_ppp | background," in c.get_registered_model("sst-card").description


def test_a_name_holds_one_layout_unless_asked(tiny_shards, tmp_path):
    cfg = _cfg(tmp_path)
    _register(cfg, "sst-one", tiny_shards)
    same = registry.layout_of([load_domains()[h] for h in HEADS])
    registry.check_layout(cfg, "sst-one", same)  # the same heads and classes: fine
    other = registry.layout_of([load_domains()[h] for h in ("syn_lip", "syn_atr")])
    with pytest.raises(ValueError, match=r"version 1 serves syn_lip \(20 classes\), syn_ppp \(7 classes\).*this "
                                         r"model serves syn_lip \(20 classes\), syn_atr \(18 classes\).*register_as"):
        registry.check_layout(cfg, "sst-one", other)
    registry.check_layout(cfg, "sst-one", other, allow=True)
    registry.check_layout(cfg, "sst-new-name", other)  # a new name takes any layout


def test_first_version_is_champion_and_later_ones_challengers(tiny_shards, tmp_path):
    cfg = _cfg(tmp_path)
    first = _register(cfg, "sst-flow", tiny_shards, seed=0)
    decision = settle_new_version(cfg, "sst-flow", first, tiny_shards)
    assert decision.promoted and decision.rival is None and "champion -> v1" in decision.summary()
    # nothing to compare with and no bar: not scored (test_min_score_bars_a_first_version scores one)
    assert decision.scores == {} and "not scored: nothing to compare with" in decision.summary()
    assert str(tracking.get_alias(cfg, "sst-flow", "champion").version) == "1"
    assert tracking.get_alias(cfg, "sst-flow", "challenger") is None  # it holds champion only
    tags = tracking.client(cfg).get_model_version("sst-flow", "1").tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.compared_with"] == "none"
    assert "promotion.mean_miou" not in tags and tags["promotion.run_id"]

    second = _register(cfg, "sst-flow", tiny_shards, seed=1)
    assert settle_new_version(cfg, "sst-flow", second, tiny_shards) is None  # a champion exists: no promotion
    assert str(tracking.get_alias(cfg, "sst-flow", "challenger").version) == "2"
    assert str(tracking.get_alias(cfg, "sst-flow", "champion").version) == "1"


def test_with_no_champion_the_challenger_must_beat_the_best_registered_version(tiny_shards, tmp_path):
    cfg = _cfg(tmp_path)
    _register(cfg, "sst-best", tiny_shards, seed=0, score=0.9)   # v1: the best recorded score
    _register(cfg, "sst-best", tiny_shards, seed=1, score=0.1)   # v2
    _register(cfg, "sst-best", tiny_shards, seed=2, score=None)  # v3: the challenger
    tracking.set_alias(cfg, "sst-best", "challenger", "3")
    result = promote(cfg, "sst-best", tiny_shards, margin=1.0, limit=2)  # nothing beats by 100 points
    assert result.champion is None and result.rival == "1" and set(result.scores) == {"3", "1"}
    assert not result.promoted and result.champion_after == "1"  # the better of the two is champion now
    assert str(tracking.get_alias(cfg, "sst-best", "champion").version) == "1"
    c = tracking.client(cfg)
    assert c.get_model_version("sst-best", "3").tags["promotion.decision"] == "kept"
    assert c.get_model_version("sst-best", "3").tags["promotion.compared_with"] == "v1"
    assert c.get_model_version("sst-best", "1").tags["promotion.decision"].startswith("champion: best registered")
    assert "vs v1 (no champion: the best registered score" in result.summary()


def test_min_score_bars_a_first_version(tiny_shards, tmp_path):
    cfg = _cfg(tmp_path)
    _register(cfg, "sst-bar", tiny_shards)
    tracking.set_alias(cfg, "sst-bar", "challenger", "1")
    result = promote(cfg, "sst-bar", tiny_shards, min_score=1.0, limit=2)
    assert not result.promoted and result.champion_after is None and set(result.scores) == {"1"}
    assert tracking.get_alias(cfg, "sst-bar", "champion") is None and "champion unchanged" in result.summary()
