"""The network's settings: the inference network's architecture (:class:`ParserConfig`, the job's ``model:``
section) and the training-only SST modules with their loss weights (:class:`SSTConfig`, the ``sst:`` section).

Kept apart from the modules that build them so that a job's schema (:mod:`sstparse.train.config`) imports no torch:
validating a YAML file, a CLI check or a sweep's search space needs only these.
"""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import Field, field_validator

from sstparse.config import StrictModel

# The ResNet family of sstparse.model.backbone (its SPECS has exactly these keys; a test checks).
BACKBONES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101")


def served_heads(domain_names: Sequence[str], target_domain: str | None) -> list[str]:
    """The heads a trained model serves (export, registry layout): every head, or only a dedicated-mode model's
    target (its other heads were trained as distillation teachers, not as parsers anyone asked for)."""
    return [target_domain] if target_domain is not None else list(domain_names)


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


class SSTConfig(StrictModel):
    """A job YAML's ``sst:`` section as it is, and what :func:`sstparse.model.sst.build_sst_model` and the losses
    take: the training-only SST modules (removed at export) and the loss weights Tune searches."""

    enabled: bool = Field(True, description="False trains the plain multi-head baseline (CE only).")
    embed_dim: int = Field(128, gt=0, description="MSA class/pixel embedding width.")
    scales: tuple[Literal["pixels", "context", "c2", "c3", "c4", "c5"], ...] = Field(
        ("pixels", "c3", "context"), min_length=1, description="Feature maps MSA aggregates: pixels (decoder F), "
                                                               "context (ASPP), c2..c5 (backbone stages).")
    ema_momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of the class memories (prototypes and "
                                                             "relation targets).")
    proto_temperature: float = Field(0.1, gt=0, description="Pixel-to-prototype cosine logit temperature.")
    assoc_temperature: float = Field(0.1, gt=0, description="Initial association similarity temperature (its "
                                                            "inverse is learned).")
    adjacency_radius: int = Field(1, ge=1, description="Classes this close (stride-4 px) count as touching (MSE's "
                                                       "relation target).")
    lambda_mse: float = Field(0.1, ge=0, description="Weight of MSE, the intra-domain enhancement (relation KL + "
                                                     "pixel-to-prototype CE).")
    lambda_mst: float = Field(0.1, ge=0, description="Weight of MST, the cross-domain transfer NLL.")
    lambda_kd: float = Field(0.0, ge=0, description="Weight of distillation: into the target head (dedicated "
                                                   "mode) or, when > 0, into every head (universal mode).")
    temperature: float = Field(2.0, gt=0, description="Distillation temperature T.")
    lambda_transfer: float = Field(0.0, ge=0, description="Weight of label transfer: every head learns from the "
                                                          "other domains' labels through the associations.")
    transfer_ramp: float = Field(0.3, ge=0, le=1, description="Fraction of training over which lambda_transfer "
                                                              "ramps in linearly from 0 (0: from the start).")
    transfer_confidence: float = Field(0.5, ge=0, le=1, description="Label transfer uses an association row only "
                                                                     "when its largest entry is at least this.")
    transfer_to_heads: bool = Field(False, description="Let MST's transfer NLL train the heads too (off: "
                                                       "sstparse.model.losses.transfer_loss says why).")
    assoc_lr_mult: float = Field(1.0, gt=0, description="Learning-rate multiplier of the association's own "
                                                         "parameters (MST scale and residuals): at the base rate M "
                                                         "stays under-fitted for thousands of steps (the benchmark "
                                                         "uses 10).")
    deep_supervision: float = Field(0.0, ge=0, description="Ablation for the plain network (enabled: false): an "
                                                           "auxiliary per-domain classifier on MSA's multi-scale "
                                                           "embedding, trained by CE at this weight.")
