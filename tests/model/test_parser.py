"""HumanParser: shapes for odd sizes, head selection, wiring from domain cards, the ResNet-50 config."""

from __future__ import annotations

import pytest
import torch

from sstparse.domains import load_domains
from sstparse.model.parser import ParserConfig, build_parser

DOMS = {"a": 20, "b": 7}


@pytest.mark.parametrize("size", [(67, 45), (33, 97), (64, 48)])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logit_shapes_for_odd_sizes(size, output_stride):
    net = build_parser(ParserConfig(output_stride=output_stride), DOMS).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        every = net(x)
        one = net(x, "b")
        feats = net.forward_features(x)
    assert list(every) == ["a", "b"]
    assert every["a"].shape == (2, 20, *size) and every["b"].shape == (2, 7, *size)
    assert torch.allclose(one, every["b"])
    assert feats.pixels.shape[:2] == (2, net.feature_dim)
    assert feats.pixels.shape[-2:] == feats.backbone[0].shape[-2:]  # F is on the stride-4 grid
    assert torch.isfinite(every["a"]).all()


def test_train_mode_with_one_image():
    # ASPP's pooled branch has no BatchNorm, so a single 512-px crop per worker trains.
    net = build_parser(ParserConfig(), DOMS).train()
    net(torch.randn(1, 3, 40, 30), "a").sum().backward()


def test_wiring_from_domain_cards():
    doms = load_domains()
    names = ["syn_lip", "syn_cihp", "syn_atr", "syn_ppp"]
    net = build_parser(ParserConfig(), [doms[n] for n in names])
    assert net.domain_names == names
    assert net.num_classes == {"syn_lip": 20, "syn_cihp": 20, "syn_atr": 18, "syn_ppp": 7}
    with pytest.raises(KeyError, match="no head"):
        net(torch.randn(1, 3, 32, 32), "lip")


def test_config_defaults_resolve_per_backbone():
    tiny = ParserConfig().resolved()
    r50 = ParserConfig(backbone="resnet50", output_stride=8).resolved()
    assert (tiny.decoder_channels, tiny.low_level_channels, tiny.feature_dim) == (64, 24, 64)
    assert (r50.decoder_channels, r50.feature_dim, r50.aspp_rates) == (256, 256, (12, 24, 36))
    with pytest.raises(ValueError, match="unknown backbone"):
        ParserConfig(backbone="resnet7").resolved()


def test_resnet50_config_shapes_and_size():
    net = build_parser(ParserConfig(backbone="resnet50"), DOMS).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 65, 49))
    assert out["a"].shape == (1, 20, 65, 49)
    n = sum(p.numel() for p in net.parameters())
    # 23.51 M backbone + DeepLab-v3+ decoder (ASPP 256 ch, 48-ch low level) + two 1x1 heads.
    assert 39e6 < n < 41e6, n
