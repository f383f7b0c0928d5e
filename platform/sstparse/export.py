"""What leaves training: the inference network as one module with one tensor output.

``HumanParser.forward`` returns a dict of heads (or one head given a name); serving formats (MLflow's pytorch
flavour, TorchScript, ONNX) want a single tensor. :class:`StackedHeads` concatenates every head's logits along
channels, in ``heads`` order; ``head_slices`` says which channels belong to which domain.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sstparse.model.parser import HumanParser


class StackedHeads(nn.Module):
    """(B, 3, H, W) normalised image -> (B, sum of classes, H, W) logits of every kept head."""

    def __init__(self, parser: HumanParser):
        super().__init__()
        self.parser = parser
        self.heads = list(parser.domain_names)

    def head_slices(self) -> dict[str, tuple[int, int]]:
        out, start = {}, 0
        for name in self.heads:
            n = self.parser.num_classes[name]
            out[name] = (start, start + n)
            start += n
        return out

    def forward(self, x: Tensor) -> Tensor:
        logits = self.parser(x)
        return torch.cat([logits[name] for name in self.heads], dim=1)
