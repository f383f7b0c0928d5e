"""Pure torch.nn ResNet family returning the stride-4/8/16/32 feature maps a DeepLab decoder needs.

Parameter and buffer names follow torchvision's ResNet exactly (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ...), so an ImageNet checkpoint saved from torchvision loads with
:func:`load_backbone_weights` -- from a local file or any fsspec URL (``s3://...``) -- without torchvision being
importable here (the registry's torchvision does not import beside torch 2.13, so it is not a dependency). The
classifier (``fc``) is not built: parsing never uses it, and dropping it keeps the exported network free of dead
parameters.

``output_stride`` 8 or 16 replaces the stride of the last one or two stages by dilation (DeepLab), so
``c4``/``c5`` keep a finer grid; the four outputs are then at strides 4, 8, 8|16, 8|16 instead of 4, 8, 16, 32.

``tiny`` is a CPU-sized member (BasicBlock, one block per stage, widths 16..128, ~0.3 M parameters) for tests
and the CPU demo; ``resnet18/50/101`` are the standard architectures.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride, dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, 1, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class ResNetSpec:
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    stem: int


SPECS: Mapping[str, ResNetSpec] = {
    "tiny": ResNetSpec(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), 16),
    "resnet18": ResNetSpec(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet34": ResNetSpec(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet50": ResNetSpec(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": ResNetSpec(Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512), 64),
}


class ResNet(nn.Module):
    """ResNet trunk without the classifier; ``forward`` returns ``[c2, c3, c4, c5]``."""

    def __init__(self, spec: ResNetSpec, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        # Which of layer2..4 trade their stride for dilation (torchvision's replace_stride_with_dilation).
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, spec.stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin, self._dilation = spec.stem, 1
        self.layer1 = self._stage(spec.block, spec.widths[0], spec.layers[0], 1, False)
        self.layer2 = self._stage(spec.block, spec.widths[1], spec.layers[1], 2, dilate[0])
        self.layer3 = self._stage(spec.block, spec.widths[2], spec.layers[2], 2, dilate[1])
        self.layer4 = self._stage(spec.block, spec.widths[3], spec.layers[3], 2, dilate[2])
        self.out_channels = tuple(w * spec.block.expansion for w in spec.widths)
        self._init_weights()

    def _stage(self, block, width: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._cin != width * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self._cin, width * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(width * block.expansion))
        # As in torchvision: the first block of a dilated stage still uses the previous dilation.
        mods = [block(self._cin, width, stride, previous_dilation, downsample)]
        self._cin = width * block.expansion
        mods += [block(self._cin, width, 1, self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity, which makes
        # training from scratch (the CPU demo has no ImageNet weights) markedly more stable.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def build_backbone(name: str, output_stride: int = 16, weights: str | None = None) -> ResNet:
    """A ResNet by name (``tiny``, ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``), optionally loaded."""
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(SPECS)}")
    net = ResNet(SPECS[name], output_stride)
    if weights:
        load_backbone_weights(net, weights)
    return net


def _read_state_dict(path: str, storage_options: Mapping | None = None) -> Mapping[str, Tensor]:
    # weights_only=True: a checkpoint is user-supplied data and must never execute code.
    if "://" in path:
        # s3:// goes through s3fs with the platform's retry policy; credentials (and AWS_ENDPOINT_URL) come from
        # the environment.
        from sstparse.data.shards import filesystem

        fs, inner = filesystem(path, dict(storage_options or {}))
        with fs.open(inner, "rb") as f:
            blob = io.BytesIO(f.read())
        obj = torch.load(blob, map_location="cpu", weights_only=True)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def load_backbone_weights(net: ResNet, path: str, storage_options: Mapping | None = None) -> None:
    """Load torchvision-named ResNet weights (``fc.*`` ignored; ``module.``/``backbone.`` prefixes stripped).

    Every backbone tensor must be present with the right shape: a partial or mismatched checkpoint (say, resnet18
    weights for a resnet50) is an error naming the offending keys, never a silent half-initialised network.
    ``path``: a local file or an fsspec URL (``s3://bucket/resnet50.pth``); ``storage_options`` go to fsspec
    (e.g. ``{"client_kwargs": {"endpoint_url": ...}}`` for a non-AWS S3 endpoint).
    """
    raw = _read_state_dict(path, storage_options)
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith("fc."):
            state[key] = value
    own = net.state_dict()
    # Checkpoints saved before BatchNorm had a step counter lack ``num_batches_tracked``; it is unused in eval
    # and only matters for momentum=None, so its absence is not a mismatch.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not a matching ResNet checkpoint: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatch {wrong[:5]} ({len(missing)}/{len(unexpected)}/"
                         f"{len(wrong)} in all)")
    net.load_state_dict(state, strict=False)  # strictness checked above, modulo num_batches_tracked
