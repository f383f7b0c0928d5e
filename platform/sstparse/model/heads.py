"""One 1x1 classifier per label domain on the shared pixel features.

Heads are keyed by domain name, in the order given; nothing here relates one domain's classes to another's
(that is learned by the training-only MST module), so adding a domain adds a head and nothing else.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn


class DomainHeads(nn.Module):
    def __init__(self, feature_dim: int, num_classes: Mapping[str, int]):
        super().__init__()
        if not num_classes:
            raise ValueError("need at least one domain head")
        self.heads = nn.ModuleDict({name: nn.Conv2d(feature_dim, n, 1) for name, n in num_classes.items()})

    @property
    def names(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, features: Tensor, domain: str | None = None) -> Tensor | dict[str, Tensor]:
        """Logits of one head (``domain`` given) or a dict of every head's logits, on the features' grid."""
        if domain is not None:
            if domain not in self.heads:
                raise KeyError(f"no head for domain {domain!r}; heads: {self.names}")
            return self.heads[domain](features)
        return {name: head(features) for name, head in self.heads.items()}
