"""CPU inference latency per image: eager PyTorch vs TorchScript vs ONNX Runtime, for the tiny and ResNet-50
inference networks (every head of the four synthetic domains stacked, as ``sstparse export`` writes them), in one
run; prints a table with each runtime's speed-up over eager.

    python jobs/benchmark_export.py [--backbones tiny resnet50] [--size 512] [--batch 1] [--runs 10] [--threads N]

Weights are random (seeded): latency does not depend on their values. Every runtime gets the same number of
intra-op threads (torch.set_num_threads and ONNX Runtime's intra_op_num_threads; inter-op 1), the same input, a
few warm-up calls (TorchScript's profiling executor optimises the graph during its first calls), then ``--runs``
timed calls; the median is reported. Runtimes alternate within each round, so a busy neighbour on a shared
machine slows all three alike rather than whichever happened to run at that moment.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from sstparse.domains import load_domains
from sstparse.export import StackedHeads, parity, runner, save_onnx, save_torchscript
from sstparse.model.parser import ParserConfig, build_parser

HEADS = ("syn_lip", "syn_cihp", "syn_atr", "syn_ppp")
RUNTIMES = ("eager", "torchscript", "onnxruntime")


def build(backbone: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    domains = load_domains()
    return StackedHeads(build_parser(ParserConfig(backbone=backbone), [domains[h] for h in HEADS])).eval()


def runtimes(net: torch.nn.Module, folder: Path, threads: int) -> dict[str, Callable[[torch.Tensor], object]]:
    ts, onnx = folder / "net.pt", folder / "net.onnx"
    save_torchscript(net, ts)
    save_onnx(net, onnx)
    return {"eager": net, "torchscript": runner("torchscript", ts), "onnxruntime": runner("onnx", onnx, threads)}


@torch.inference_mode()
def time_all(fns: dict[str, Callable], x: torch.Tensor, warmup: int, runs: int) -> dict[str, float]:
    """Median seconds per call of each runtime; the runtimes take turns within every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(backbone: str, args: argparse.Namespace) -> dict[str, float]:
    net = build(backbone)
    with tempfile.TemporaryDirectory(prefix="sstparse-bench-") as tmp:
        t0 = time.perf_counter()
        fns = runtimes(net, Path(tmp), args.threads)
        print(f"{backbone}: exported in {time.perf_counter() - t0:.1f} s", flush=True)
        for fmt, name in (("torchscript", "net.pt"), ("onnx", "net.onnx")):
            (r,) = parity(net, fmt, Path(tmp) / name, [(args.batch, args.size, args.size)])
            print(f"  {fmt} parity at {r['shape']}: max |logit diff| {r['max_abs_diff']:.2e}, "
                  f"argmax agreement {r['argmax_agreement']:.4%}", flush=True)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        medians = time_all(fns, x, args.warmup, args.runs)
    per_image = {k: v * 1000 / args.batch for k, v in medians.items()}
    print("  " + ", ".join(f"{k} {v:.1f} ms/img" for k, v in per_image.items()), flush=True)
    return per_image


def table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    head = (f"CPU latency per image, {args.size}x{args.size}, batch {args.batch}, {args.threads} thread(s), median "
            f"of {args.runs} after {args.warmup} warm-up (speed-up vs eager in brackets)\n\n"
            "| backbone | eager ms | TorchScript ms | ONNX Runtime ms |\n|---|---|---|---|")
    lines = [head]
    for backbone, ms in rows.items():
        cells = [f"{ms['eager']:.1f}"] + [f"{ms[k]:.1f} ({ms['eager'] / ms[k]:.2f}x)" for k in RUNTIMES[1:]]
        lines.append(f"| {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=["tiny", "resnet50"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {b: bench(b, args) for b in args.backbones}
    print("\n" + table(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
