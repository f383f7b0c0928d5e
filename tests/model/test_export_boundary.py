"""Zero inference cost: the exported network is exactly a plain multi-head parser (params, keys, FLOPs, outputs).

Also DDP safety: one backward on a single-domain batch reaches every trainable parameter, so DDP runs without
``find_unused_parameters`` (checked directly, and with a real DDP wrapper on a one-process gloo group).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.flop_counter import FlopCounterMode

from sstparse.model.backbone import build_backbone
from sstparse.model.decoder import DeepLabDecoder
from sstparse.model.heads import DomainHeads
from sstparse.model.parser import HumanParser, ParserConfig, build_parser
from sstparse.model.config import SSTConfig
from sstparse.model.sst import build_sst_model, inference_model

DOMS = {"a": 6, "b": 3, "c": 4}


def _flops(net, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    return fc.get_total_flops()


def _plain(cfg: ParserConfig, heads: dict) -> HumanParser:
    """A plain multi-head network built by hand from the explicit constructors (no SST code involved)."""
    cfg = cfg.resolved()
    bb = build_backbone(cfg.backbone, cfg.output_stride)
    dec = DeepLabDecoder(bb.out_channels, cfg.decoder_channels, cfg.low_level_channels, cfg.feature_dim,
                         cfg.aspp_rates)
    return HumanParser(bb, dec, DomainHeads(cfg.feature_dim, heads), cfg).eval()


def _train_a_step(model, x, y, d):
    opt = torch.optim.SGD(model.parameters(), 0.01)
    model(x, y, d)["loss"].backward()
    opt.step()


@pytest.mark.parametrize("target", [None, "b"])
def test_inference_model_equals_plain_network(target):
    cfg = ParserConfig()
    model = build_sst_model(cfg, DOMS, SSTConfig(lambda_kd=1.0 if target else 0.0), target_domain=target).train()
    x, y, d = torch.randn(3, 3, 40, 32), torch.randint(0, 3, (3, 40, 32)), torch.tensor([0, 1, 2])
    _train_a_step(model, x, y, d)  # memories filled, weights moved: the boundary must hold after training
    exported = inference_model(model)
    plain = _plain(cfg, {"b": 3} if target else DOMS)
    assert sum(p.numel() for p in model.sst.parameters()) > 0
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in plain.parameters())
    assert list(exported.state_dict()) == list(plain.state_dict())
    assert not any(k.startswith(("sst", "msa", "mse", "mst")) for k in exported.state_dict())
    x = torch.randn(1, 3, 67, 45)
    assert _flops(exported, x) == _flops(plain, x) > 0
    plain.load_state_dict(exported.state_dict())
    with torch.no_grad():
        a, b = exported(x), plain(x)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not exported.training and model.training  # a copy in eval mode; the training model is untouched


def test_inference_model_matches_build_parser_and_keeps_outputs():
    cfg = ParserConfig()
    model = build_sst_model(cfg, DOMS).eval()
    exported = inference_model(model)
    built = build_parser(cfg, DOMS).eval()
    assert list(exported.state_dict()) == list(built.state_dict())
    assert _flops(exported, torch.randn(1, 3, 32, 32)) == _flops(built, torch.randn(1, 3, 32, 32))
    x = torch.randn(2, 3, 35, 29)
    with torch.no_grad():
        assert torch.equal(exported(x, "c"), model.parser(x, "c"))
    one = inference_model(model, keep=["a"])
    assert one.domain_names == ["a"]
    with pytest.raises(KeyError):
        inference_model(model, keep=["nope"])


def _grad_holes(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("domain", [0, 1, 2])
@pytest.mark.parametrize("variant", ["universal", "universal_kd", "dedicated", "plain", "no_sst_weights"])
def test_single_domain_batch_reaches_every_parameter(domain, variant):
    sst = {"universal": SSTConfig(), "universal_kd": SSTConfig(lambda_kd=0.5), "dedicated": SSTConfig(lambda_kd=0.5),
           "plain": SSTConfig(enabled=False),
           "no_sst_weights": SSTConfig(lambda_mse=0.0, lambda_mst=0.0, lambda_kd=0.0)}[variant]
    target = "c" if variant == "dedicated" else None
    model = build_sst_model(ParserConfig(), DOMS, sst, target_domain=target).train()
    y = torch.randint(0, 3, (2, 36, 28))
    y[0, :4] = 255
    out = model(torch.randn(2, 3, 36, 28), y, torch.tensor([domain, domain]))
    out["loss"].backward()
    assert _grad_holes(model) == []


def test_ddp_without_find_unused_parameters(tmp_path):
    """Alternate single-domain batches under a real DDP wrapper: an unused parameter would raise on step 2."""
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    def run(model, steps):
        opt = torch.optim.SGD(model.parameters(), 0.01)
        for k in steps:
            out = model(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)), torch.tensor([k, k]))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()

    try:
        model = DDP(build_sst_model(ParserConfig(), DOMS).train(), find_unused_parameters=False)
        run(model, [0, 1, 2, 0])  # memories all-reduced across the (one-rank) group on the way
        assert inference_model(model).domain_names == list(DOMS)
        # Negative control: the same wrapper does catch a parameter that a step leaves unused.
        broken = build_sst_model(ParserConfig(), DOMS).train()
        broken.unused = torch.nn.Linear(2, 2)
        with pytest.raises(RuntimeError, match="finished reduction"):
            run(DDP(broken, find_unused_parameters=False), [0, 1])
    finally:
        dist.destroy_process_group()
