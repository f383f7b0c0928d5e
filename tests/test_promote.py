"""Promotion: challenger vs champion scored through the pyfunc on validation shards; the alias moves only on a win."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sstparse import export, tracking
from sstparse.cli import main
from sstparse.model.sst import inference_model
from sstparse.promote import promote
from tests.serving import log_tiny, tiny_model


def _challenger(served, seed: int = 1) -> str:
    run = tracking.start_run(served.cfg, f"challenger-{seed}")
    return export.log_pyfunc_model(served.cfg, run, inference_model(tiny_model(seed=seed)),
                                     register_as=served.name, alias="challenger")


def _champion(served) -> str:
    return str(tracking.get_alias(served.cfg, served.name, "champion").version)


def test_challenger_replaces_champion_only_when_better_by_the_margin(tiny_shards, tmp_path):
    served = log_tiny(tmp_path)  # version 1: champion
    assert _challenger(served) == "2"
    kept = promote(served.cfg, served.name, tiny_shards, margin=1.0, limit=3)  # nothing beats by 100 points
    assert not kept.promoted and _champion(served) == "1"
    assert set(kept.scores) == {"1", "2"} and set(kept.scores["2"]) == {"syn_lip", "syn_ppp", "mean"}
    run = tracking.client(served.cfg).get_run(kept.run_id)
    assert run.data.tags["decision"] == "kept" and run.data.params["champion_version"] == "1"
    assert run.data.metrics["challenger/mean_miou"] == pytest.approx(kept.scores["2"]["mean"])

    # Same images, same models: the scores are reproducible, and the decision follows them.
    again = promote(served.cfg, served.name, tiny_shards, margin=0.0, limit=3)
    assert again.scores == kept.scores
    assert again.promoted == (kept.scores["2"]["mean"] > kept.scores["1"]["mean"])
    won = promote(served.cfg, served.name, tiny_shards, margin=-1.0, limit=3)  # any challenger wins
    assert won.promoted and _champion(served) == "2"


def test_first_promotion_needs_no_champion_and_a_challenger_is_required(tiny_shards, tmp_path):
    served = log_tiny(tmp_path, name="sst-first")
    tracking.client(served.cfg).delete_registered_model_alias(served.name, "champion")
    with pytest.raises(ValueError, match="challenger"):
        promote(served.cfg, served.name, tiny_shards, limit=2)
    _challenger(served)
    result = promote(served.cfg, served.name, tiny_shards, limit=2)
    assert result.champion is None and result.promoted and _champion(served) == "2"


def test_promote_cli(tiny_shards, tmp_path):
    served = log_tiny(tmp_path, name="sst-cli")
    _challenger(served)
    out = CliRunner().invoke(main, ["promote", "--model", served.name, "--data", tiny_shards, "--limit", "2",
                                    "--margin", "-1", "--tracking-uri", served.cfg.tracking_uri])
    assert out.exit_code == 0, out.output
    assert "champion -> v2" in out.output and "comparison recorded as MLflow run" in out.output
    missing = CliRunner().invoke(main, ["promote", "--model", "nope", "--data", tiny_shards,
                                        "--tracking-uri", served.cfg.tracking_uri])
    assert missing.exit_code != 0 and "no version holds the alias 'challenger'" in missing.output
    # After the promotion the challenger is the champion, and nothing waits: a second run says so and succeeds.
    tracking.client(served.cfg).delete_registered_model_alias(served.name, "challenger")
    again = CliRunner().invoke(main, ["promote", "--model", served.name, "--data", tiny_shards,
                                      "--tracking-uri", served.cfg.tracking_uri])
    assert again.exit_code == 0 and "no version holds 'challenger'; champion stays v2" in again.output
