"""What leaves training: the inference network as one module with one tensor output, and its serving formats.

``HumanParser.forward`` returns a dict of heads (or one head given a name); serving formats (torch.export,
TorchScript, ONNX) want a single tensor. :class:`StackedHeads` concatenates every head's logits along channels, in
``heads`` order; the *layout* (a small JSON) says which channels belong to which domain, with everything a user
needs to turn logits into label maps without the domain cards: class names, colours, the left/right channel swap
of a horizontal flip and the input normalisation.

Sources: a Ray Train checkpoint folder (``meta.json`` + ``state.pt``) or any MLflow model URI of the pyfunc
(:mod:`sstparse.pyfunc`). A pyfunc's torch.export program is not re-exported as it is: the eager network is
rebuilt from the layout's architecture and the program's weights, so TorchScript tracing and ONNX export start
from the same ``nn.Module`` as for a checkpoint (and the parity check compares against real PyTorch code).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import PIL
import torch
from torch import Tensor, nn

from sstparse import tracking
from sstparse.data.augment import MEAN, STD
from sstparse.domains import load_domains
from sstparse.model.parser import HumanParser, ParserConfig, build_parser
from sstparse.model.sst import inference_model
from sstparse.pyfunc import PARAMS as PYFUNC_PARAMS
from sstparse.train import checkpoints

LAYOUT_VERSION = 1
MIN_SIZE = 32  # smallest image side the exported shapes admit (stride-16 backbone: c5 must stay >= 2x2)
PROGRAM_FILE, LAYOUT_FILE = "program.pt2", "layout.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
Format = Literal["torchscript", "onnx"]


class ExportError(ValueError):
    """An export source is unusable or an exported file disagrees with PyTorch; the message names the file."""


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


# ------------------------------------------------------------------------------------------------- layout
def domain_info(domain: Any) -> dict[str, Any]:
    """What serving needs from a :class:`~sstparse.domains.LabelDomain` card (JSON-ready)."""
    n = domain.num_classes
    return {"classes": list(domain.classes), "colors": np.asarray(domain.palette[:n]).tolist(),
            "flip_permutation": np.asarray(domain.flip_lut[:n]).astype(int).tolist(),
            "ignore_index": int(domain.ignore_index)}


def architecture(parser: HumanParser) -> dict[str, Any]:
    """The parser's resolved config, enough to rebuild it (weights paths left out: weights travel separately)."""
    if parser.config is None:
        raise ExportError("the parser carries no ParserConfig: cannot describe its architecture")
    cfg = parser.config.resolved().model_dump()
    cfg.pop("backbone_weights", None)
    cfg["aspp_rates"] = list(cfg["aspp_rates"])
    return cfg


def serving_layout(parser: HumanParser, info: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Layout of ``StackedHeads(parser)``: per head its channel slice plus ``info[head]`` (see :func:`domain_info`)."""
    missing = [h for h in parser.domain_names if h not in info]
    if missing:
        raise ExportError(f"no class names/colours for head(s) {missing}")
    slices = StackedHeads(parser).head_slices()
    heads = {}
    for name, (start, stop) in slices.items():
        if len(info[name]["classes"]) != stop - start:
            raise ExportError(f"head {name}: {stop - start} channels but {len(info[name]['classes'])} classes")
        heads[name] = {"channels": [start, stop], **{k: info[name][k] for k in
                                                     ("classes", "colors", "flip_permutation", "ignore_index")}}
    return {"version": LAYOUT_VERSION, "architecture": architecture(parser),
            "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "color": "RGB",
                      "normalize": "(pixel - mean) / std on the 0-255 scale", "mean": MEAN.tolist(),
                      "std": STD.tolist(), "min_size": MIN_SIZE},
            "output": {"name": OUTPUT_NAME, "layout": "NCHW", "channels": sum(b - a for a, b in slices.values())},
            "heads": heads}


def layout_info(layout: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-head ``info`` of an existing layout (to re-lay it out for a subset of heads)."""
    return {name: {k: v for k, v in head.items() if k != "channels"} for name, head in layout["heads"].items()}


# -------------------------------------------------------------------------------------- torch.export program
def example_input(batch: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def export_program(net: nn.Module) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch, height and width (the example's 2x64x64 specialises nothing)."""
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=MIN_SIZE),
            3: torch.export.Dim("width", min=MIN_SIZE)}
    return torch.export.export(net.eval(), (example_input(),), dynamic_shapes={"x": dims})


def save_serving_artifacts(parser: HumanParser, info: Mapping[str, Mapping[str, Any]], out_dir: str | Path
                           ) -> dict[str, str]:
    """Write the torch.export program and the layout JSON; returns MLflow's ``artifacts`` mapping."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = StackedHeads(parser).eval()
    program, layout = out / PROGRAM_FILE, out / LAYOUT_FILE
    torch.export.save(export_program(net), program)
    layout.write_text(json.dumps(serving_layout(parser, info), indent=1))
    return {"program": str(program), "layout": str(layout)}


def parser_from_program(program: torch.export.ExportedProgram, layout: Mapping[str, Any]) -> HumanParser:
    """Rebuild the eager network of a StackedHeads program from the layout's architecture and the program's
    weights (strict: every tensor must match)."""
    arch = dict(layout["architecture"])
    arch["aspp_rates"] = tuple(arch["aspp_rates"])
    heads = {name: h["channels"][1] - h["channels"][0] for name, h in layout["heads"].items()}
    parser = build_parser(ParserConfig(**arch), heads)
    state = {k.removeprefix("parser."): v for k, v in program.state_dict.items()}
    try:
        parser.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ExportError(f"the program's weights do not fit its layout's architecture: {err}") from None
    return parser.eval()


# ----------------------------------------------------------------------------------------------- sources
def load_source(source: str, tracking_uri: str | None = None) -> tuple[HumanParser, dict[str, dict[str, Any]]]:
    """(inference network, per-head info) from a Ray Train checkpoint folder or an MLflow pyfunc model URI."""
    if checkpoints.is_checkpoint(source):
        _, model, meta = checkpoints.load_model(Path(source))
        domains = load_domains()
        return inference_model(model), {n: domain_info(domains[n]) for n in meta["domains"]}
    if Path(source).is_dir() and not (Path(source) / "MLmodel").is_file():
        raise ExportError(f"{source}: neither a training checkpoint ({checkpoints.META_FILE} + "
                          f"{checkpoints.STATE_FILE}) nor an MLflow model (MLmodel)")
    served = tracking.load_pyfunc_model(source, tracking_uri).unwrap_python_model()
    return parser_from_program(served.program, served.layout), layout_info(served.layout)


# ----------------------------------------------------------------------------------------------- MLflow model
# The pyfunc's params (name, MLflow type, default): the same names and defaults as SSTParsePyfunc.predict.
def log_pyfunc_model(cfg, run_id: str, parser: HumanParser, register_as: str | None = None,
                     alias: str | None = None, domains: Mapping | None = None) -> str | None:
    """Log the inference network (a HumanParser, e.g. ``inference_model(model)``) as the sstparse pyfunc under the
    artifact name ``model``, optionally register it (and set ``alias``); returns the registered version.

    ``cfg``: a TrackingConfig. ``domains``: name -> LabelDomain giving each head's class names, colours and flip
    pairs (default: the domain cards); they are copied into the model's layout JSON, so loading the model needs no
    card.
    """
    domains = domains or load_domains()
    info = {name: domain_info(domains[name]) for name in parser.domain_names}
    code = Path(__file__).with_name("pyfunc.py")  # model from code: MLflow stores this file, nothing is pickled
    # Pinned by hand: MLflow cannot infer a +cpu torch build. The code imports sstparse, which the serving
    # environment must have installed (pip install -e . from this repository).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                    f"pillow=={PIL.__version__}"]
    with tempfile.TemporaryDirectory(prefix="sstparse-pyfunc-") as tmp:
        return tracking.log_pyfunc(cfg, run_id, code, save_serving_artifacts(parser, info, tmp), PYFUNC_PARAMS,
                                   requirements, {"heads": StackedHeads(parser).head_slices()}, register_as, alias)


# --------------------------------------------------------------------------------------- TorchScript / ONNX
def save_torchscript(net: nn.Module, path: Path) -> None:
    # Tracing, not scripting: HumanParser's dict-of-heads forward is not scriptable as is, and tracing records
    # the input's size as graph ops, so batch and size stay dynamic (the parity check runs two sizes to prove it).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*deprecated", category=Warning)
        traced = torch.jit.trace(net.eval(), example_input(), check_trace=False)
    traced.save(str(path))


def save_onnx(net: nn.Module, path: Path) -> None:
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=MIN_SIZE),
            3: torch.export.Dim("width", min=MIN_SIZE)}
    # external_data=False: one self-contained file (fine below ONNX's 2 GB protobuf limit; ResNet-101 is ~250 MB).
    with warnings.catch_warnings():  # torch's exporter trips over its own deprecated pytree API: not ours to fix
        warnings.filterwarnings("ignore", message=".*LeafSpec.*deprecated", category=FutureWarning)
        torch.onnx.export(net.eval(), (example_input(),), str(path), dynamo=True, dynamic_shapes={"x": dims},
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False)


def runner(fmt: Format, path: Path, threads: int | None = None):
    """A callable (B,3,H,W) float tensor -> logits tensor running the exported file in its own runtime."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=Warning)
            module = torch.jit.load(str(path), map_location="cpu")
        return lambda x: module(x)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


PARITY_SHAPES = ((1, 96, 64), (3, 64, 80))  # (batch, height, width): neither is the 2x64x64 export example


@torch.no_grad()
def parity(net: nn.Module, fmt: Format, path: Path, shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES
           ) -> list[dict[str, Any]]:
    """Max |logit difference| and argmax agreement of the exported file against PyTorch, per input shape."""
    run = runner(fmt, path)
    out = []
    for k, (b, h, w) in enumerate(shapes):
        x = example_input(b, h, w, seed=k + 1)
        ref, got = net.eval()(x), run(x)
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportError(f"{path}: output shape {tuple(got.shape)} for input {tuple(x.shape)}, PyTorch gives "
                              f"{tuple(ref.shape)}")
        out.append({"shape": [b, 3, h, w], "max_abs_diff": float((got - ref).abs().max()),
                    "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).double().mean())})
    return out


def check_parity(report: Sequence[Mapping[str, Any]], path: Path, atol: float = 1e-3,
                 min_agreement: float = 0.999) -> None:
    bad = [r for r in report if r["max_abs_diff"] > atol or r["argmax_agreement"] < min_agreement]
    if bad:
        raise ExportError(f"{path}: exported logits disagree with PyTorch: {bad} (allowed: max |diff| <= {atol}, "
                          f"argmax agreement >= {min_agreement})")


def export(source: str, fmt: Format, out: str | Path, heads: Sequence[str] | None = None,
           tracking_uri: str | None = None) -> dict[str, Any]:
    """Export the inference network (``heads``: a subset, default all) of ``source`` to ``out`` and write the
    layout sidecar ``<out>.json``; returns the sidecar (layout, parameter count, parity report)."""
    parser, info = load_source(source, tracking_uri)
    if heads:
        parser = inference_model(parser, keep=list(heads))
    net = StackedHeads(parser).eval()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    (save_torchscript if fmt == "torchscript" else save_onnx)(net, path)
    report = parity(net, fmt, path)
    check_parity(report, path)
    sidecar = {**serving_layout(parser, info), "format": fmt, "file": path.name, "source": source,
               "parameters": sum(p.numel() for p in parser.parameters()),
               "dynamic_axes": {INPUT_NAME: {"0": "batch", "2": "height", "3": "width"},
                                OUTPUT_NAME: {"0": "batch", "2": "height", "3": "width"}},
               "parity": report}
    sidecar_path(path).write_text(json.dumps(sidecar, indent=1))
    return sidecar


def sidecar_path(path: str | Path) -> Path:
    return Path(f"{path}.json")
