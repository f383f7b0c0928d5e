"""GPU checks (off by default: `pytest -m gpu` on a CUDA machine): AMP training steps and NCCL-free basics."""

from __future__ import annotations

import pytest
import torch

from sstparse.domains import load_domains
from sstparse.model.config import ParserConfig
from sstparse.model.sst import build_sst_model

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_training_step_is_finite(cuda, dtype):
    torch.manual_seed(0)
    domains = [load_domains()[n] for n in ("syn_lip", "syn_ppp")]
    model = build_sst_model(ParserConfig(backbone="resnet18"), domains).to(cuda)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(4, 3, 128, 128, device=cuda)
    y = torch.randint(0, 7, (4, 128, 128), device=cuda)
    d = torch.tensor([0, 1, 0, 1], device=cuda)
    for _ in range(3):
        with torch.autocast("cuda", dtype=dtype):
            out = model(x, y, d)
        opt.zero_grad()
        scaler.scale(out["loss"]).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(out["loss"])
