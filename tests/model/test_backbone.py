"""ResNet backbone: strides, dilation, torchvision-compatible sizes and key names, safe weight loading."""

from __future__ import annotations

import pickle

import fsspec
import pytest
import torch

from sstparse.model.backbone import build_backbone, load_backbone_weights


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
@pytest.mark.parametrize("os_, strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_strides_and_channels(name, os_, strides):
    net = build_backbone(name, os_).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[-2:] for f in feats] == [(64 // s, 96 // s) for s in strides]
    assert [f.shape[1] for f in feats] == list(net.out_channels)


def test_odd_input_sizes():
    net = build_backbone("tiny", 16).eval()
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 67, 45))
    # Each stride-2 step rounds up (padding 1 / 3): 67 -> 34 -> 17 -> 9 -> 5, 45 -> 23 -> 12 -> 6 -> 3.
    assert [tuple(f.shape[-2:]) for f in feats] == [(17, 12), (9, 6), (5, 3), (5, 3)]


# torchvision's ResNets minus the 1000-way classifier (fc: 512*e*1000 + 1000 parameters).
@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512 - 513_000), ("resnet50", 25_557_032 - 2_049_000),
                                            ("resnet101", 44_549_160 - 2_049_000)])
def test_parameter_counts_match_torchvision(name, expected):
    net = build_backbone(name, 16)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_torchvision_key_names():
    keys = set(build_backbone("resnet50").state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
              "layer4.2.conv3.weight", "layer4.2.bn3.num_batches_tracked"):
        assert k in keys
    assert not any(k.startswith("fc.") for k in keys)


def _torchvision_style_checkpoint(name: str) -> dict:
    src = build_backbone(name)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, src.out_channels[-1])  # classifier: ignored
    state["module.fc.bias"] = torch.zeros(1000)
    return {"state_dict": state}, src


def test_load_local_weights(tmp_path):
    ckpt, src = _torchvision_style_checkpoint("tiny")
    path = tmp_path / "tiny.pth"
    torch.save(ckpt, path)
    net = build_backbone("tiny", 8, weights=str(path))  # dilation does not change parameter shapes
    for k, v in src.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


def test_load_weights_from_fsspec_url():
    # memory:// exercises the same fsspec branch as s3:// (which needs s3fs credentials / an endpoint).
    ckpt, src = _torchvision_style_checkpoint("tiny")
    with fsspec.open("memory://weights/tiny.pth", "wb") as f:
        torch.save(ckpt, f)
    net = build_backbone("tiny")
    load_backbone_weights(net, "memory://weights/tiny.pth")
    assert torch.equal(net.conv1.weight, src.conv1.weight)


def test_mismatched_checkpoint_is_an_error(tmp_path):
    ckpt, _ = _torchvision_style_checkpoint("tiny")
    path = tmp_path / "tiny.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="not a matching ResNet checkpoint"):
        build_backbone("resnet18", weights=str(path))


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_are_loaded_with_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        build_backbone("tiny", weights=str(path))


def test_bad_output_stride_and_name():
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("tiny", 4)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")


@pytest.mark.s3
def test_load_weights_from_s3(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    url = f"s3://{s3_server.bucket}/test_load_weights_from_s3/tiny.pth"
    ckpt, src = _torchvision_style_checkpoint("tiny")
    with fs.open(url, "wb") as f:
        torch.save(ckpt, f)
    net = build_backbone("tiny")
    load_backbone_weights(net, url, storage_options=s3_server.storage_options)
    assert torch.equal(net.layer4[0].conv2.weight, src.layer4[0].conv2.weight)


def test_backbone_names_agree_with_the_config():
    from sstparse.model.backbone import SPECS
    from sstparse.model.config import BACKBONES

    assert tuple(SPECS) == BACKBONES
