"""Scalable Semantic Transfer (training only): MSA, MSE, MST and the training wrapper :class:`SSTModel`.

Our formulation (docs/sst.md has the full account and where it departs from the paper):

* Classes of all domains share one global index space (domain d's class c is ``offset_d + c``), so one pass
  handles a batch that mixes domains, and nothing in the code relates one domain to another a priori.
* MSA: each configured scale (decoder pixels F, backbone c3, ASPP context by default) is projected by a small
  1x1 MLP to ``embed_dim``, L2-normalised, resampled to F's stride-4 grid and fused by learned softmax weights into a
  unit pixel embedding U. A class embedding is the masked average of U over the class's labelled pixels (pooled
  over the batch). An EMA memory keeps one prototype per class of every domain.
* MSE: class-relation attention over a domain's class embeddings (shared q/k/v + a learned per-domain relation
  bias; attention only within the domain, never to itself) enhances them: Z^ = norm(Z + W_o A V Z). A is
  supervised by the ground truth's spatial structure: row i of the target is the distribution of classes that touch
  class i within ``adjacency_radius`` stride-4 pixels (EMA over batches). Pixel-to-prototype CE classifies U
  against the enhanced prototypes of the pixel's domain.
* MST: M(a->b)[i, :] = softmax_j(s * cos(Z^_a,i, Z^_b,j) + R_ab[i, j]) -- embedding similarity with a learned
  scale s, plus a learned residual R_ab (zero at start) that can express what similarity cannot (frequency splits
  such as "arms" -> 0.6 upper / 0.4 lower arm). No graph between domains is given; M is fitted to data by the
  transfer NLL alone (losses.transfer_loss): on domain a's images, head b's probabilities mapped through M(b->a)
  must explain a's labels. Its gradient reaches the residual, the scale and the embeddings (associated classes are
  pulled together across domains); head b's probabilities are detached by default (``transfer_to_heads``: with
  them trainable, head b and M(b->a) can co-adapt into a permuted solution -- docs/sst.md has the measurement).
  Pairs whose target domain is absent from a batch enter with weight zero, so DDP sees every parameter every step.
* KD (losses.distillation_loss): on the other domains' images, head t learns from their labels (and the other
  heads) mapped through M(*->t). Dedicated mode (``target_domain``) distils into the target head; universal mode
  with ``lambda_kd > 0`` into every head (the mean over heads).

Memories are buffers (saved in checkpoints); their batch statistics are all-reduced under torch.distributed, so
every rank keeps the same memory. None of this is part of the exported network (:func:`inference_model`).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sstparse.model import losses as L
from sstparse.model.config import SSTConfig, served_heads
from sstparse.model.parser import HumanParser, ParserConfig, ParserFeatures, build_parser

_NEG = -1e9  # masked logit; SST maths runs in float32, where exp(_NEG - max) is exactly 0 and nothing overflows




def _scale_map(feats: ParserFeatures, name: str) -> Tensor:
    if name == "pixels":
        return feats.pixels
    if name == "context":
        return feats.context
    return feats.backbone[int(name[1]) - 2]


def _scale_channels(parser: HumanParser, name: str) -> int:
    if name == "pixels":
        return parser.decoder.feature_dim
    if name == "context":
        return parser.decoder.channels
    return parser.backbone.out_channels[int(name[1]) - 2]


class DomainLayout:
    """Global class index space: domain d's classes occupy ``offsets[d] : offsets[d] + sizes[d]``."""

    def __init__(self, num_classes: Mapping[str, int]):
        self.names = list(num_classes)
        self.sizes = [int(num_classes[n]) for n in self.names]
        self.offsets = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        self.total = sum(self.sizes)

    def block(self, name: str) -> slice:
        k = self.names.index(name)
        return slice(self.offsets[k], self.offsets[k] + self.sizes[k])

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.names for b in self.names if a != b]


class MSA(nn.Module):
    """Multi-scale semantic aggregation: fused unit pixel embeddings and their per-class averages."""

    def __init__(self, channels: Mapping[str, int], embed_dim: int):
        super().__init__()
        self.proj = nn.ModuleDict({s: nn.Sequential(nn.Conv2d(c, embed_dim, 1, bias=False), nn.BatchNorm2d(embed_dim),
                                                    nn.ReLU(inplace=True), nn.Conv2d(embed_dim, embed_dim, 1))
                                   for s, c in channels.items()})
        self.scale_logits = nn.Parameter(torch.zeros(len(channels)))  # softmax -> learned scale weights

    def pixel_embeddings(self, feats: ParserFeatures, size: Sequence[int]) -> Tensor:
        w = torch.softmax(self.scale_logits, 0)
        out = 0
        for k, (name, proj) in enumerate(self.proj.items()):
            e = F.normalize(proj(_scale_map(feats, name).float()), dim=1)
            if e.shape[-2:] != tuple(size):
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            out = out + w[k] * e
        return F.normalize(out, dim=1)

    @staticmethod
    def class_sums(emb: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
        """Per global class: sum of pixel embeddings (C, E) and pixel count (C,), over the whole batch."""
        return torch.einsum("bchw,behw->ce", onehot, emb), onehot.sum((0, 2, 3))


class MSE(nn.Module):
    """Intra-domain relation attention over class embeddings (shared projections, per-domain relation bias)."""

    def __init__(self, layout: DomainLayout, embed_dim: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(embed_dim, embed_dim) for _ in range(4))
        self.relation_bias = nn.ParameterDict({n: nn.Parameter(torch.zeros(c, c))
                                               for n, c in zip(layout.names, layout.sizes)})
        self.scale = embed_dim ** -0.5

    def forward(self, z: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
        """z (C, E) unit class embeddings -> (enhanced unit embeddings, log attention (C, C))."""
        logits = self.q(z) @ self.k(z).T * self.scale + torch.block_diag(*self.relation_bias.values())
        log_attn = torch.log_softmax(logits.masked_fill(~allowed, _NEG), dim=-1)
        return F.normalize(z + self.o(log_attn.exp() @ self.v(z)), dim=-1), log_attn


class MST(nn.Module):
    """Cross-domain associations M(a->b) from embedding similarity plus a learned residual per ordered pair."""

    def __init__(self, layout: DomainLayout, init_temperature: float):
        super().__init__()
        self.layout = layout
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.residual = nn.ParameterDict({f"{a}->{b}": nn.Parameter(torch.zeros(layout.sizes[layout.names.index(a)],
                                                                                layout.sizes[layout.names.index(b)]))
                                          for a, b in layout.pairs()})

    def log_matrices(self, z: Tensor) -> dict[tuple[str, str], Tensor]:
        """(a, b) -> log M(a->b), (C_a, C_b), rows log-normalised."""
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()  # cap: keep the softmax from saturating early
        sim = scale * (z @ z.T)
        out = {}
        for a, b in self.layout.pairs():
            blk = sim[self.layout.block(a), self.layout.block(b)] + self.residual[f"{a}->{b}"]
            out[(a, b)] = torch.log_softmax(blk, dim=-1)
        return out


def _all_reduce_(*tensors: Tensor) -> None:
    """Sum batch statistics over ranks so every rank's memory stays identical (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()


@torch.no_grad()
def _ema_rows_(memory: Tensor, seen: Tensor, batch: Tensor, present: Tensor, momentum: float) -> None:
    """EMA of rows present in the batch; a row seen for the first time takes the batch value outright."""
    p = present.view(-1, *([1] * (memory.dim() - 1)))
    s = (seen > 0).view_as(p)
    blended = torch.where(s, momentum * memory + (1 - momentum) * batch, batch)
    memory.copy_(torch.where(p, blended, memory))
    seen.copy_(torch.where(present, torch.ones_like(seen), seen))


class SSTModules(nn.Module):
    """MSA + MSE + MST with their memories. ``forward`` returns the SST losses and the association matrices."""

    def __init__(self, parser: HumanParser, cfg: SSTConfig = SSTConfig()):
        super().__init__()
        self.cfg = cfg
        self.layout = lay = DomainLayout(parser.num_classes)
        self.msa = MSA({s: _scale_channels(parser, s) for s in cfg.scales}, cfg.embed_dim)
        self.mse = MSE(lay, cfg.embed_dim)
        # One domain has nothing to transfer to: no MST parameters at all, so none can sit unused under DDP.
        self.mst = MST(lay, cfg.assoc_temperature) if len(lay.names) > 1 else None
        cls_dom = torch.cat([torch.full((n,), k) for k, n in enumerate(lay.sizes)])
        same = cls_dom[:, None] == cls_dom[None, :]
        self.register_buffer("class_domain", cls_dom, persistent=False)
        self.register_buffer("offsets", torch.tensor(lay.offsets), persistent=False)
        # Relation attention stays inside a domain and skips the class itself (the residual keeps that).
        self.register_buffer("relation_allowed", same & ~torch.eye(lay.total, dtype=torch.bool), persistent=False)
        c, e = lay.total, cfg.embed_dim
        for name, shape in (("prototypes", (c, e)), ("proto_seen", (c,)), ("adjacency", (c, c)),
                            ("adjacency_seen", (c,))):
            self.register_buffer(name, torch.zeros(shape))

    # ---------------------------------------------------------------------------------------------- statistics
    def _global_onehot(self, labels: Tensor, domain_idx: Tensor) -> tuple[Tensor, Tensor]:
        valid = labels != L.IGNORE
        g = torch.where(valid, labels + self.offsets[domain_idx].view(-1, 1, 1), torch.full_like(labels, L.IGNORE))
        onehot = F.one_hot(g.clamp_min(0), self.layout.total).permute(0, 3, 1, 2).float()
        return g, onehot * valid[:, None].float()

    def _adjacency_counts(self, onehot: Tensor) -> Tensor:
        """touch[i, j]: pixels of class i with a class-j pixel within the radius (diagonal dropped)."""
        r = self.cfg.adjacency_radius
        near = F.max_pool2d(onehot, 2 * r + 1, stride=1, padding=r)
        touch = torch.einsum("bihw,bjhw->ij", onehot, near)
        return touch * (1 - torch.eye(touch.shape[0], device=touch.device))

    @torch.no_grad()
    def _update_memory(self, sums: Tensor, mass: Tensor, touch: Tensor) -> None:
        _all_reduce_(sums, mass, touch)
        m = self.cfg.ema_momentum
        _ema_rows_(self.prototypes, self.proto_seen, F.normalize(sums, dim=-1), mass > 0, m)
        row = touch.sum(-1)
        _ema_rows_(self.adjacency, self.adjacency_seen, touch / row.clamp_min(1e-6)[:, None], row > 0, m)

    # ------------------------------------------------------------------------------------------------- forward
    def forward(self, feats: ParserFeatures, logits: Mapping[str, Tensor], labels: Tensor, domain_idx: Tensor
                ) -> dict[str, Any]:
        """``logits``: every head on F's grid; ``labels``: (B, h, w) local labels on that grid (IGNORE = none)."""
        with torch.autocast(device_type=labels.device.type, enabled=False):
            return self._forward(feats, {k: v.float() for k, v in logits.items()}, labels, domain_idx)

    def _forward(self, feats, logits, labels, domain_idx) -> dict[str, Any]:
        g, onehot = self._global_onehot(labels, domain_idx)
        emb = self.msa.pixel_embeddings(feats, labels.shape[-2:])
        sums, mass = MSA.class_sums(emb, onehot)
        probs = {k: torch.softmax(z, dim=1) for k, z in logits.items()}
        if self.training:
            self._update_memory(sums.detach().clone(), mass.clone(), self._adjacency_counts(onehot))
        # Classes in this batch use their live embedding (gradients reach MSA and the parser); the others use
        # the memory, so every domain's relations and associations take part in every step.
        live = F.normalize(sums, dim=-1)
        z = torch.where((mass > 0)[:, None], live, self.prototypes)
        z_hat, log_attn = self.mse(z, self.relation_allowed)
        out: dict[str, Any] = {}
        out["mse/relation"] = L.kl_rows(self.adjacency, log_attn, self.adjacency_seen)
        out["mse/prototype"] = self._prototype_loss(emb, z_hat, g, domain_idx)
        out["mse"] = out["mse/relation"] + out["mse/prototype"]
        if self.mst is not None:
            log_m = self.mst.log_matrices(z_hat)
            assoc = {k: v.exp() for k, v in log_m.items()}
            # Zero-weighted sum over *all* pairs: those whose target domain is absent stay in the graph (DDP).
            unused = 0.0 * torch.stack([lm.sum() for lm in log_m.values()]).sum()
            out["mst"] = L.transfer_loss(probs, labels, domain_idx, assoc, self.cfg.transfer_to_heads) + unused
            out["assoc"] = assoc
        return out

    def _prototype_loss(self, emb: Tensor, z_hat: Tensor, g: Tensor, domain_idx: Tensor) -> Tensor:
        """CE of each pixel's embedding against the enhanced prototypes of its own domain only."""
        logits = torch.einsum("behw,ce->bchw", emb, z_hat) / self.cfg.proto_temperature
        own = self.class_domain[None, :] == domain_idx[:, None]
        logits = logits.masked_fill(~own[:, :, None, None], _NEG)
        loss = F.cross_entropy(logits, g, ignore_index=L.IGNORE, reduction="sum")
        return loss / (g != L.IGNORE).sum().clamp_min(1)

    # ------------------------------------------------------------------------------------------------ readout
    @torch.no_grad()
    def association(self, a: str, b: str) -> Tensor:
        """The learned M(a->b): (C_a, C_b), row-stochastic, from the memory prototypes (float32, on CPU)."""
        if self.mst is None or a == b or a not in self.layout.names or b not in self.layout.names:
            raise KeyError(f"no association {a!r} -> {b!r}; domains: {self.layout.names}")
        z_hat, _ = self.mse(self.prototypes, self.relation_allowed)
        return self.mst.log_matrices(z_hat)[(a, b)].exp().cpu()


class DeepSupervision(nn.Module):
    """Ablation, training only: MSA's multi-scale embedding read by a plain per-domain 1x1 classifier trained with
    CE. It puts the same feature levels under the same kind of pixel loss as MSE's prototype CE, without class
    relations, prototypes or any cross-domain term: "B + deep supervision" tells how much of SST's gain that is."""

    def __init__(self, parser: HumanParser, cfg: SSTConfig):
        super().__init__()
        self.layout = lay = DomainLayout(parser.num_classes)
        self.msa = MSA({s: _scale_channels(parser, s) for s in cfg.scales}, cfg.embed_dim)
        self.classifier = nn.Conv2d(cfg.embed_dim, lay.total, 1)
        cls_dom = torch.cat([torch.full((n,), k) for k, n in enumerate(lay.sizes)])
        self.register_buffer("class_domain", cls_dom, persistent=False)
        self.register_buffer("offsets", torch.tensor(lay.offsets), persistent=False)

    def forward(self, feats: ParserFeatures, labels: Tensor, domain_idx: Tensor) -> Tensor:
        with torch.autocast(device_type=labels.device.type, enabled=False):
            logits = self.classifier(self.msa.pixel_embeddings(feats, labels.shape[-2:]))
        own = self.class_domain[None, :] == domain_idx[:, None]
        logits = logits.masked_fill(~own[:, :, None, None], _NEG)
        g = torch.where(labels != L.IGNORE, labels + self.offsets[domain_idx].view(-1, 1, 1), labels)
        return F.cross_entropy(logits, g, ignore_index=L.IGNORE)


class SSTModel(nn.Module):
    """Training model: ``forward(images, labels, domain_idx)`` -> dict with ``loss`` and its parts.

    images (B, 3, H, W) float; labels (B, H, W) uint8/long, values outside the sample's domain (255) ignored;
    domain_idx (B,) long into ``domain_names`` (the parser's head order). Every head runs on every sample.
    Returned: ``loss``, ``ce``, ``ce/<domain>`` (present domains), ``mse``, ``mse/*``, ``mst``, ``mst/*``, ``kd``
    (dedicated mode, or universal with ``lambda_kd > 0``), ``assoc`` ({(a, b): M(a->b)}) and ``logits`` (every
    head on the stride-4 grid).
    """

    def __init__(self, parser: HumanParser, sst: SSTModules | None = None, cfg: SSTConfig = SSTConfig(),
                 target_domain: str | None = None, aux: DeepSupervision | None = None):
        super().__init__()
        self.parser, self.sst, self.cfg, self.target_domain = parser, sst, cfg, target_domain
        self.aux = aux
        self.progress = 1.0  # fraction of training done (set by the training loop): ramps label transfer in
        if target_domain is not None:
            if target_domain not in parser.domain_names:
                raise ValueError(f"target_domain {target_domain!r} not in {parser.domain_names}")
            if sst is None or sst.mst is None:
                raise ValueError("dedicated mode needs SST modules and at least two domains")
        self.register_buffer("num_classes", torch.tensor(list(parser.num_classes.values())), persistent=False)

    @property
    def domain_names(self) -> list[str]:
        return self.parser.domain_names

    def distillation_targets(self) -> list[str]:
        """Heads that KD trains: the target (dedicated mode, even at weight 0, so the graph never changes with
        a tuned weight) or, in universal mode with ``lambda_kd > 0``, every head -- each learns from the other
        domains' labels through M(*->t) on their images."""
        if self.target_domain is not None:
            return [self.target_domain]
        if self.sst is None or self.sst.mst is None or self.cfg.lambda_kd == 0:
            return []
        return list(self.domain_names)

    def forward(self, images: Tensor, labels: Tensor, domain_idx: Tensor) -> dict[str, Any]:
        domain_idx = domain_idx.long()
        feats = self.parser.forward_features(images)
        logits = self.parser.heads(feats.pixels)
        y = L.local_labels(labels, domain_idx, self.num_classes)
        out: dict[str, Any] = {}
        out["ce"], per_domain = L.domain_cross_entropy(logits, y, domain_idx)
        out.update({f"ce/{k}": v for k, v in per_domain.items()})
        # Nearest resampling keeps labels categorical (and IGNORE intact) on the stride-4 grid.
        grid = F.interpolate(y[:, None].float(), size=feats.pixels.shape[-2:], mode="nearest")[:, 0].long()
        if self.aux is not None:
            out["aux"] = self.aux(feats, grid, domain_idx)
        if self.sst is not None:
            out.update(self.sst(feats, logits, grid, domain_idx))
            if self.cfg.lambda_transfer > 0 and "assoc" in out:
                out["transfer"] = L.label_transfer_loss(logits, grid, domain_idx, out["assoc"],
                                                        self.cfg.transfer_confidence)
            targets = self.distillation_targets()
            if targets:
                out["kd"] = L.distillation_loss(logits, grid, domain_idx, out["assoc"], targets,
                                                self.cfg.temperature)
        out["loss"] = L.total_loss(out, self.cfg, self.progress)
        out["logits"] = logits
        return out

    def association(self, a: str, b: str) -> Tensor:
        if self.sst is None:
            raise KeyError("no SST modules: no learned associations")
        return self.sst.association(a, b)


def build_sst_model(cfg: ParserConfig, domains: Any, sst: SSTConfig = SSTConfig(),
                    target_domain: str | None = None) -> SSTModel:
    """Parser + SST modules as a job's ``sst:`` section says: ``enabled: false`` is the plain multi-head baseline
    trained with CE only, plus :class:`DeepSupervision` when ``deep_supervision > 0``."""
    parser = build_parser(cfg, domains)
    modules = SSTModules(parser, sst) if sst.enabled else None
    aux = DeepSupervision(parser, sst) if not sst.enabled and sst.deep_supervision > 0 else None
    return SSTModel(parser, modules, sst, target_domain, aux)


def inference_model(model: nn.Module, keep: Sequence[str] | None = None) -> HumanParser:
    """The exportable network: a copy of the parser without any SST module, in eval mode.

    ``keep``: heads to keep (dedicated parsing); default all heads, or only the target head of a dedicated-mode
    SSTModel. Accepts an SSTModel, a DDP-wrapped one, or a HumanParser.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    parser = model.parser if isinstance(model, SSTModel) else model
    if not isinstance(parser, HumanParser):
        raise TypeError(f"expected an SSTModel or HumanParser, got {type(model).__name__}")
    if keep is None and isinstance(model, SSTModel):
        keep = served_heads(model.domain_names, model.target_domain)
    out = copy.deepcopy(parser).eval()
    if keep is not None:
        missing = [k for k in keep if k not in out.domain_names]
        if missing or not keep:
            raise KeyError(f"cannot keep heads {list(keep)}; heads: {out.domain_names}")
        out.heads.heads = nn.ModuleDict({k: out.heads.heads[k] for k in keep})
    return out
