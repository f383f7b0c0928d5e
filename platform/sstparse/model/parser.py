"""The inference network: backbone -> DeepLab decoder -> shared pixel features F -> one 1x1 head per domain.

This is everything that is exported and served. SST's modules (:mod:`sstparse.model.sst`) only *read* the
features this network computes (through :meth:`HumanParser.forward_features`, an ordinary method -- no hooks, no
extra submodules), so dropping them leaves exactly this network: zero inference cost.

Universal parsing: ``parser(x, "syn_lip")`` (one head) or ``parser(x)`` (a dict with every head).
Dedicated parsing: the same network with one head kept (:func:`sstparse.model.sst.inference_model`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from sstparse.model.backbone import ResNet, build_backbone
from sstparse.model.config import ParserConfig
from sstparse.model.decoder import DeepLabDecoder
from sstparse.model.heads import DomainHeads

class ParserFeatures(NamedTuple):
    """Intermediate maps of one forward pass (SST reads these during training)."""

    backbone: list[Tensor]  # [c2, c3, c4, c5]
    context: Tensor         # ASPP output, on c5's grid
    pixels: Tensor          # F: feature_dim channels on c2's grid (stride 4)


class HumanParser(nn.Module):
    """Multi-head parser. ``forward(x, domain)`` -> logits at the input size; ``forward(x)`` -> all heads."""

    def __init__(self, backbone: ResNet, decoder: DeepLabDecoder, heads: DomainHeads,
                 config: ParserConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.heads = heads
        self.config = config  # kept for rebuilding (export, checkpoints); not a module, no parameters

    @property
    def domain_names(self) -> list[str]:
        return self.heads.names

    @property
    def num_classes(self) -> dict[str, int]:
        return {name: head.out_channels for name, head in self.heads.heads.items()}

    @property
    def feature_dim(self) -> int:
        return self.decoder.feature_dim

    def forward_features(self, x: Tensor) -> ParserFeatures:
        feats = self.backbone(x)
        pixels, context = self.decoder(feats)
        return ParserFeatures(feats, context, pixels)

    def forward(self, x: Tensor, domain: str | None = None) -> Tensor | dict[str, Tensor]:
        pixels = self.forward_features(x).pixels
        size = x.shape[-2:]
        if domain is not None:
            return F.interpolate(self.heads(pixels, domain), size=size, mode="bilinear", align_corners=False)
        return {name: F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                for name, z in self.heads(pixels).items()}


def _num_classes(domains: Any) -> dict[str, int]:
    """Accept a mapping name -> LabelDomain (``load_domains()``), a sequence of LabelDomains, or name -> int."""
    items: Iterable = domains.values() if isinstance(domains, Mapping) else domains
    if isinstance(domains, Mapping) and all(isinstance(v, int) for v in domains.values()):
        return dict(domains)
    return {d.name: int(d.num_classes) for d in items}


def build_parser(cfg: ParserConfig, domains: Any) -> HumanParser:
    """Wire a :class:`HumanParser` from a config and the domains (head order = the order given)."""
    cfg = cfg.resolved()
    backbone = build_backbone(cfg.backbone, cfg.output_stride, cfg.backbone_weights)
    decoder = DeepLabDecoder(backbone.out_channels, cfg.decoder_channels, cfg.low_level_channels,
                             cfg.feature_dim, cfg.aspp_rates)
    heads = DomainHeads(cfg.feature_dim, _num_classes(domains))
    return HumanParser(backbone, decoder, heads, cfg)
