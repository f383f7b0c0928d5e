"""Parameter counts and FLOPs of the parser with and without the SST modules.

    python -m sstparse.model.stats --backbones tiny resnet50 --size 512 512

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts (convolutions, matmuls, einsums; 2 FLOPs per
multiply-add; elementwise ops, pooling, softmax and interpolation are not counted), per image:

* inference: the exported network (``inference_model``), every head, one image, eval mode;
* training forward: ``SSTModel`` forward (losses included, no backward) on a batch of two images of two different
  domains, divided by two; "plain" is the same wrapper with ``sst=None`` (CE only).

Random weights and synthetic labels: FLOPs and parameter counts do not depend on them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sstparse.domains import load_domains
from sstparse.model.parser import ParserConfig
from sstparse.model.config import SSTConfig
from sstparse.model.sst import build_sst_model, inference_model

DEFAULT_DOMAINS = ("syn_lip", "syn_cihp", "syn_atr", "syn_ppp")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(fn, *args: Any) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ModelStats:
    backbone: str
    params_inference: int
    params_sst: int
    flops_inference: int
    flops_train_plain: int
    flops_train_sst: int


def measure(backbone: str, domains: Any, size: Sequence[int] = (512, 512), output_stride: int = 16,
            sst_cfg: SSTConfig = SSTConfig()) -> ModelStats:
    """Counts for one backbone; ``domains``: name -> num_classes, or LabelDomains (at least two)."""
    torch.manual_seed(0)
    cfg = ParserConfig(backbone=backbone, output_stride=output_stride)
    model = build_sst_model(cfg, domains, sst_cfg).train()
    plain = build_sst_model(cfg, domains, SSTConfig(enabled=False)).train()
    plain.parser.load_state_dict(model.parser.state_dict())
    exported = inference_model(model)
    h, w = size
    x1 = torch.randn(1, 3, h, w)
    x2 = torch.randn(2, 3, h, w)
    sizes = list(model.parser.num_classes.values())
    labels = torch.stack([torch.randint(0, sizes[0], (h, w)), torch.randint(0, sizes[1], (h, w))])
    didx = torch.tensor([0, 1])
    return ModelStats(
        backbone=backbone,
        params_inference=count_params(exported),
        params_sst=count_params(model.sst),
        flops_inference=count_flops(exported, x1),
        flops_train_plain=count_flops(plain, x2, labels, didx) // 2,
        flops_train_sst=count_flops(model, x2, labels, didx) // 2,
    )


def markdown_table(rows: Sequence[ModelStats], size: Sequence[int]) -> str:
    def m(n: int) -> str:
        return f"{n / 1e6:.3f} M"

    def g(n: int) -> str:
        return f"{n / 1e9:.2f} G"

    head = (f"| backbone | params, inference (= exported) | + SST modules (training only) | params, training | "
            f"FLOPs/img inference 3x{size[0]}x{size[1]} | FLOPs/img train fwd, no SST | FLOPs/img train fwd, SST |\n"
            "|---|---|---|---|---|---|---|")
    lines = [f"| {r.backbone} | {m(r.params_inference)} | {m(r.params_sst)} | {m(r.params_inference + r.params_sst)}"
             f" | {g(r.flops_inference)} | {g(r.flops_train_plain)} | {g(r.flops_train_sst)} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sstparse.model.stats", description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["tiny", "resnet50"])
    ap.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    ap.add_argument("--output-stride", type=int, default=16)
    ap.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS),
                    help="domain cards to build heads for (first two label the training batch)")
    args = ap.parse_args(argv)
    cards = load_domains()
    domains = [cards[n] for n in args.domains]
    rows = [measure(b, domains, args.size, args.output_stride) for b in args.backbones]
    print(f"domains: {', '.join(args.domains)} ({sum(d.num_classes for d in domains)} classes); "
          f"output stride {args.output_stride}; SST: {SSTConfig()}")
    print(markdown_table(rows, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
