"""The training job's config: one YAML file (jobs/configs/*.yaml) -> :class:`JobConfig`.

Sections: ``data`` (the Ray Data stream), ``model`` (the inference network), ``sst`` (training-only modules and
loss weights), ``optim``, ``train`` (mode, scaling, checkpoints, fault tolerance) and ``tracking`` (MLflow).
Class counts and head order are never written here: they come from the domain cards and ``data.domain_mix``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sstparse.config import StrictModel, TrackingConfig
from sstparse.data.config import DataConfig
from sstparse.model.config import ParserConfig, SSTConfig


class OptimConfig(StrictModel):
    """Optimiser and poly learning-rate schedule."""

    optimizer: Literal["sgd", "adamw"] = Field("adamw", description="SGD (momentum, nesterov) or AdamW.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (after warm-up).")
    weight_decay: float = Field(1e-4, ge=0, description="Decoupled (AdamW) or L2 (SGD) weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    poly_power: float = Field(0.9, ge=0, description="lr = peak * (1 - step/total)^power after warm-up.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps.")
    grad_clip: float | None = Field(5.0, gt=0, description="Max global grad norm (None: no clipping).")


class FaultInjection(StrictModel):
    """Crash one worker on purpose (tests of FailureConfig); only on the first attempt, never after a restore."""

    epoch: int = Field(ge=1, description="Epoch in which to crash (>= 1, so a checkpoint exists to resume from).")
    rank: int = Field(0, ge=0, description="Which worker crashes.")
    after_steps: int = Field(1, ge=0, description="Optimiser steps into that epoch before crashing.")


class TrainConfig(StrictModel):
    """How and where training runs."""

    mode: Literal["single", "universal", "dedicated"] = Field(
        "universal", description="single: one domain (baseline); universal: all heads; dedicated: `target` only "
                                 "at export, distilling from the other domains.")
    target: str | None = Field(None, description="The domain of single/dedicated mode.")
    epochs: int = Field(10, ge=1, description="Passes over the mixed training stream.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else gloo on CPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (0.5 on a 2-core laptop).")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="Autocast dtype (GPU; bf16 works on CPU).")
    compile: bool = Field(False, description="torch.compile the model (GPU clusters).")
    channels_last: bool = Field(False, description="NHWC memory format for the model and its input batches "
                                                   "(faster convolutions on tensor-core GPUs).")
    storage_path: str = Field("ray_results", description="Checkpoint storage: local folder or s3://bucket/prefix.")
    name: str | None = Field(None, description="Run name; reusing it with the same storage_path resumes.")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept (best by the objective).")
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts from the latest checkpoint (-1: inf).")
    val_every: int = Field(1, ge=1, description="Validate (and checkpoint) every N epochs and after the last one; "
                                                 "sweeps need 1 (ASHA compares the objective at every epoch).")
    val_flip: bool = Field(False, description="Flip TTA (with the domain's left/right swap) in validation.")
    val_batch_size: int = Field(8, ge=1, description="Validation images per batch; consecutive images of one "
                                                     "domain and size are stacked, never padded.")
    val_scales: tuple[float, ...] = Field((1.0,), min_length=1, description="Multi-scale TTA factors.")
    log_every: int = Field(20, ge=1, description="Training-loss log interval in steps.")
    verbose: bool = Field(False, description="Ray's own INFO lines in the console as well: each worker's metric "
                                             "report every epoch, checkpoint paths, Ray Data's execution plans. "
                                             "Off: the loss lines, the epoch summaries, warnings and errors. "
                                             "(Ray Data's INFO lines also need RAY_DATA_LOG_LEVEL=INFO where Ray "
                                             "starts.)")
    seed: int = Field(0, description="Seeds model init and the data stream.")
    fault_injection: FaultInjection | None = Field(None, description="Crash a worker on purpose (tests).")
    smoke_test: bool = Field(False, description="Set by --smoke-test: the model registers as <name>-smoke, so a "
                                                "smoke run never becomes a version of the real model.")


class JobConfig(StrictModel):
    """One training job."""

    data: DataConfig
    model: ParserConfig = ParserConfig()
    sst: SSTConfig = SSTConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # reads $MLFLOW_TRACKING_URI when built

    @model_validator(mode="after")
    def _mode_matches_domains(self) -> "JobConfig":
        mode, target, names = self.train.mode, self.train.target, self.domain_names
        if mode in ("single", "dedicated") and target is None:
            raise ValueError(f"train.target: required in {mode} mode")
        if target is not None and target not in self.data.domain_mix:
            raise ValueError(f"train.target: {target!r} is not in data.domain_mix {list(self.data.domain_mix)}")
        if mode == "dedicated" and len(names) < 2:
            raise ValueError("train.mode: dedicated needs at least two domains in data.domain_mix")
        if mode == "dedicated" and not self.sst.enabled:
            raise ValueError("sst.enabled: dedicated mode distils through SST associations; enable it")
        return self

    @property
    def domain_names(self) -> list[str]:
        """Heads in order (= the stream's `domain` index): the target alone in single mode, else every domain of
        data.domain_mix -- a weight-0 domain keeps its head and validation and learns only through transfer."""
        return [self.train.target] if self.train.mode == "single" else self.data.domains

    @property
    def target_domain(self) -> str | None:
        """The head a dedicated-mode model distils into (and the only one it serves); None in the other modes."""
        return self.train.target if self.train.mode == "dedicated" else None

    def training_data(self):
        """The data config the stream is built from: single mode sees its target domain only."""
        if self.train.mode != "single":
            return self.data
        return self.data.model_copy(update={"domain_mix": {self.train.target: 1.0}})

    @property
    def objective(self) -> str:
        """The metric checkpoints and sweeps rank by."""
        return "val/mean_miou" if self.train.mode == "universal" else f"val/{self.train.target}/miou"

    @property
    def registered_name(self) -> str:
        name = self.tracking.register_as or ("sst-universal" if self.train.mode == "universal"
                                             else f"sst-{self.train.target}")
        return f"{name}-smoke" if self.train.smoke_test else name
