"""`make gpu-check` (jobs/gpu_check.py): without CUDA it measures nothing and exits 0; its measuring code runs
here on the CPU, tiny (the training loop's own train_step under each AMP / channels_last setting); on a GPU
machine `pytest -m gpu` runs it at its real size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.scripts import job_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "tiny", "--size", "64", "--batch", "2", "--steps", "2"]


@pytest.fixture(scope="module")
def gpu_check():
    return job_script("gpu_check")


def test_without_cuda_it_says_so_and_exits_0(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_every_setting_trains_with_finite_losses_on_cpu(gpu_check, capsys):
    settings = ["fp32", "bf16", "fp16", "bf16+channels_last"]  # compile needs a C++ toolchain: GPU run only
    assert gpu_check.main(["--device", "cpu", *TINY, "--settings", *settings]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "img/s" not in line]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == settings
    assert all(" | yes | " in r for r in rows)


def test_a_non_finite_loss_fails_the_check(gpu_check, capsys, monkeypatch):
    real = gpu_check.train_step

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(gpu_check, "train_step", poisoned)
    assert gpu_check.main(["--device", "cpu", *TINY, "--settings", "fp32"]) == 1
    assert "non-finite losses under fp32" in capsys.readouterr().out


def test_channels_last_setting_reaches_the_model(gpu_check):
    job = gpu_check.job_for(gpu_check.argparse.Namespace(
        config=str(ROOT / "jobs/configs/universal.yaml"), backbone="tiny", size=64, batch=2, device="cpu"),
        "bf16+channels_last")
    model = gpu_check.build(job, torch.device("cpu"))[0]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (job.train.amp, job.train.channels_last, job.train.compile) == ("bf16", True, False)


@pytest.mark.gpu
def test_gpu_check_at_its_real_size(gpu_check):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert gpu_check.main(["--steps", "10"]) == 0
