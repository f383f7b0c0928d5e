"""``sstparse export``: TorchScript and ONNX of the inference network from a training checkpoint or a pyfunc URI,
parity with PyTorch at sizes and batches other than the export example's, no SST module inside, one head or all."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from sstparse.cli import main
from sstparse.export import StackedHeads, example_input
from sstparse.model.sst import inference_model
from tests.serving import log_tiny, save_checkpoint

SHAPES = [(1, 72, 56), (3, 128, 96)]  # (batch, height, width); export traced 2x64x64
# TorchScript is deprecated in favour of torch.export, but it is one of the formats users asked for.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    return path, save_checkpoint(path)


def _export(source, fmt, out, *extra):
    res = CliRunner().invoke(main, ["export", "--model", str(source), "--format", fmt, "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out.parent / f"{out.name}.json").read_text())


def _run(fmt, path):
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(x).detach().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"image": x.numpy()})[0]


def _assert_parity(reference: torch.nn.Module, fmt, path):
    run = _run(fmt, path)
    for k, (b, h, w) in enumerate(SHAPES):
        x = example_input(b, h, w, seed=10 + k)
        with torch.no_grad():
            ref = reference(x).numpy()
        got = run(x)
        assert got.shape == ref.shape == (b, ref.shape[1], h, w)
        diff, agree = np.abs(got - ref).max(), (got.argmax(1) == ref.argmax(1)).mean()
        print(f"{fmt} {(b, 3, h, w)}: max |logit diff| {diff:.2e}, argmax agreement {agree:.4%}")
        assert diff < 1e-4 and agree > 0.999


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_checkpoint_export_all_heads_matches_pytorch(checkpoint, tmp_path, fmt):
    path, model = checkpoint
    out = tmp_path / f"parser.{'pt' if fmt == 'torchscript' else 'onnx'}"
    sidecar = _export(path, fmt, out)
    reference = StackedHeads(inference_model(model)).eval()
    _assert_parity(reference, fmt, out)
    n_params = sum(p.numel() for p in inference_model(model).parameters())
    assert sidecar["parameters"] == n_params < sum(p.numel() for p in model.parameters())
    assert {h: v["channels"] for h, v in sidecar["heads"].items()} == {"syn_lip": [0, 20], "syn_ppp": [20, 27]}
    assert sidecar["heads"]["syn_lip"]["flip_permutation"][14:20] == [15, 14, 17, 16, 19, 18]
    assert [r["argmax_agreement"] for r in sidecar["parity"]] == [1.0, 1.0]
    if fmt == "torchscript":  # the file holds exactly the inference network's parameters: no SST module
        assert sum(p.numel() for p in torch.jit.load(str(out)).parameters()) == n_params
    else:  # every named weight is one of the inference network's (BatchNorm is folded into convolutions)
        names = {i.name for i in onnx.load(str(out)).graph.initializer if i.name.startswith("parser.")}
        known = set(reference.state_dict())
        assert names and all(n in known or n.removesuffix("_bias") in known for n in names)
        assert {d.dim_param for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim} >= {
            "batch", "height", "width"}


def test_one_head_from_a_pyfunc_uri(tmp_path):
    served = log_tiny(tmp_path)
    out = tmp_path / "ppp.onnx"
    sidecar = _export(served.uri, "onnx", out, "--heads", "syn_ppp", "--tracking-uri", served.cfg.tracking_uri)
    assert list(sidecar["heads"]) == ["syn_ppp"] and sidecar["heads"]["syn_ppp"]["channels"] == [0, 7]
    reference = StackedHeads(inference_model(served.model, keep=["syn_ppp"])).eval()
    _assert_parity(reference, "onnx", out)
    assert sidecar["parameters"] == sum(p.numel() for p in reference.parameters())


def test_bad_sources_and_heads_are_clear_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    (tmp_path / "empty").mkdir()
    runner = CliRunner()
    res = runner.invoke(main, ["export", "--model", str(tmp_path / "empty"), "--format", "onnx",
                               "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code != 0 and "neither a training checkpoint" in res.output
    res = runner.invoke(main, ["export", "--model", str(path), "--format", "torchscript",
                               "--out", str(tmp_path / "x.pt"), "--heads", "lip"])
    assert res.exit_code != 0 and "cannot keep heads ['lip']" in res.output
