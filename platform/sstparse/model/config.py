"""The network's settings: the inference network's architecture (:class:`ParserConfig`, the job's ``model:``
section), the training-only SST modules (:class:`SSTConfig`) and the loss weights (:class:`SSTLossWeights`).

Kept apart from the modules that build them so that a job's schema (:mod:`sstparse.train.config`) imports no torch:
validating a YAML file, a CLI check or a sweep's search space needs only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from sstparse.config import StrictModel

# The ResNet family of sstparse.model.backbone (its SPECS has exactly these keys; a test checks).
BACKBONES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101")
SCALES = ("pixels", "context", "c2", "c3", "c4", "c5")  # feature maps MSA can aggregate


def default_rates(output_stride: int) -> tuple[int, ...]:
    """DeepLab's rates (6, 12, 18) at output stride 16, doubled at 8 and halved at 32 (same receptive field)."""
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


# Decoder sizes used when a ParserConfig leaves them unset: DeepLab-v3+'s for real backbones, a quarter of
# that for the CPU-sized one so tests and the CPU demo stay fast.
_DECODER_DEFAULTS = {"tiny": (64, 24, 64)}
_DECODER_DEFAULT = (256, 48, 256)  # (ASPP channels, low-level projection, feature_dim)


class ParserConfig(StrictModel):
    """The inference network's architecture (what is exported; weights and domains are separate). It is a job
    YAML's ``model:`` section as it is, and what ``build_parser`` takes."""

    backbone: str = Field("tiny", description="ResNet family member: tiny (CPU-sized, tests and the demo), "
                                               "resnet18, resnet34, resnet50, resnet101.")
    output_stride: Literal[8, 16, 32] = Field(16, description="Stride of the backbone's last feature map (8 and 16 "
                                                             "dilate the last stages).")
    decoder_channels: int | None = Field(None, gt=0, description="ASPP width (None: 256, or 64 for tiny).")
    low_level_channels: int | None = Field(None, gt=0, description="Width of the projected stride-4 map (None: 48, "
                                                                   "or 24 for tiny).")
    feature_dim: int | None = Field(None, gt=0, description="Channels of the shared pixel features F the heads "
                                                            "read (None: 256, or 64 for tiny).")
    aspp_rates: tuple[int, ...] | None = Field(None, min_length=1, description="Atrous rates (None: 6/12/18 "
                                                                               "scaled to the output stride).")
    backbone_weights: str | None = Field(
        None, description="Optional torchvision-named ResNet weights: a local path or s3:// URL (never a hub).")

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        if v not in BACKBONES:
            raise ValueError(f"unknown backbone {v!r}; known: {list(BACKBONES)}")
        return v

    def resolved(self) -> "ParserConfig":
        """The same config with every None replaced by its backbone-dependent default."""
        ch, low, dim = _DECODER_DEFAULTS.get(self.backbone, _DECODER_DEFAULT)
        return self.model_copy(update={
            "decoder_channels": self.decoder_channels or ch, "low_level_channels": self.low_level_channels or low,
            "feature_dim": self.feature_dim or dim,
            "aspp_rates": tuple(self.aspp_rates or default_rates(self.output_stride))})


@dataclass(frozen=True)
class SSTConfig:
    """Training-only SST modules.

    embed_dim: class/pixel embedding width of MSA.
    scales: feature maps MSA aggregates: ``pixels`` (decoder F), ``context`` (ASPP), ``c2``..``c5`` (backbone).
    ema_momentum: memory momentum (class prototypes and relation targets).
    proto_temperature: temperature of the pixel-to-prototype cosine logits.
    assoc_temperature: initial temperature of the association similarity (its inverse is learned).
    adjacency_radius: classes within this many stride-4 pixels "touch" (MSE relation target).
    transfer_to_heads: let the transfer NLL train the heads too (off: see losses.transfer_loss for why).
    transfer_confidence: label transfer uses a row of M only when its largest entry is at least this.
    """

    embed_dim: int = 128
    scales: tuple[str, ...] = ("pixels", "c3", "context")
    ema_momentum: float = 0.9
    proto_temperature: float = 0.1
    assoc_temperature: float = 0.1
    adjacency_radius: int = 1
    transfer_to_heads: bool = False
    transfer_confidence: float = 0.5

    def __post_init__(self) -> None:
        bad = [s for s in self.scales if s not in SCALES]
        if bad or not self.scales:
            raise ValueError(f"scales: unknown {bad} (known: {list(SCALES)}) or empty")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.proto_temperature <= 0 or self.assoc_temperature <= 0 or self.adjacency_radius < 1:
            raise ValueError("temperatures must be > 0 and adjacency_radius >= 1")
        if not 0.0 <= self.transfer_confidence <= 1.0:
            raise ValueError(f"transfer_confidence must be in [0, 1], got {self.transfer_confidence}")


@dataclass(frozen=True)
class SSTLossWeights:
    """Loss weights (what Tune searches, with the domain mix and the learning rate).

    lambda_mse: weight of MSE (relation KL + pixel-to-prototype CE).
    lambda_mst: weight of MST (cross-domain transfer NLL).
    lambda_kd: weight of distillation: into the target head (dedicated mode) or every head (universal mode).
    temperature: T of the distillation softmax (> 0).
    lambda_transfer: weight of label transfer (every head learns from the other domains' labels through M).
    transfer_ramp: fraction of training over which lambda_transfer ramps linearly from 0 (0: from the start).
    lambda_aux: weight of the deep-supervision CE (ablation of the plain network, sst.DeepSupervision).
    """

    lambda_mse: float = 0.1
    lambda_mst: float = 0.1
    lambda_kd: float = 0.0
    temperature: float = 2.0
    lambda_transfer: float = 0.0
    transfer_ramp: float = 0.3
    lambda_aux: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.transfer_ramp <= 1.0:
            raise ValueError(f"transfer_ramp must be in [0, 1], got {self.transfer_ramp}")
        for name in ("lambda_mse", "lambda_mst", "lambda_kd", "lambda_transfer", "lambda_aux"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
