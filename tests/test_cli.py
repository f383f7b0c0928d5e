"""The `sstparse train` and `sstparse tune` verbs: the same entries as jobs/train.py and jobs/tune.py, and a bad
setting is named before any Ray process starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sstparse.cli import main
from sstparse.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def test_train_and_tune_are_commands():
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0 and "train " in out.output and "tune " in out.output


@pytest.mark.parametrize("verb,config,override,field", [
    ("train", "universal.yaml", "train.epochs=0", "train.epochs"),
    ("train", "universal.yaml", "train.epoch=3", "train.epoch"),
    ("tune", "sweep.yaml", "job.optim.lr=-1", "optim.lr"),
])
def test_a_bad_override_is_named_before_ray_starts(verb, config, override, field, monkeypatch):
    import sstparse.train.job
    import sstparse.tune.job

    def connect(*args, **kwargs):
        raise AssertionError("Ray was started before the job was validated")

    for module in (sstparse.train.job, sstparse.tune.job):
        monkeypatch.setattr(module, "connect", connect)
    out = CliRunner().invoke(main, [verb, "--config", str(CONFIGS / config), override])
    assert isinstance(out.exception, ConfigError) and field in str(out.exception), out.output


@pytest.mark.parametrize("verb,config", [("train", "universal.yaml"), ("tune", "sweep.yaml")])
@pytest.mark.parametrize("flag", [False, True])
def test_verbose_flag_reaches_the_job(verb, config, flag, monkeypatch):
    """The console is quiet unless --verbose sets the job's train.verbose (Ray's lines and bars back on)."""
    import sstparse.train.job
    import sstparse.tune.job

    seen = {}
    monkeypatch.setattr(sstparse.train.job, "connect", lambda *a, **k: None)
    monkeypatch.setattr(sstparse.tune.job, "connect", lambda *a, **k: None)
    monkeypatch.setattr(sstparse.train.job, "fit", lambda job, **k: seen.setdefault("job", job))
    monkeypatch.setattr(sstparse.train.job, "format_result", lambda result: "")
    monkeypatch.setattr(sstparse.tune.job, "run_sweep", lambda sweep, job, **k: seen.setdefault("job", job))
    monkeypatch.setattr(sstparse.tune.job, "format_sweep", lambda result: "")
    out = CliRunner().invoke(main, [verb, "--config", str(CONFIGS / config)] + (["--verbose"] if flag else []))
    assert out.exit_code == 0, out.output
    assert seen["job"].train.verbose is flag
