"""The SST benchmark's report: per-arm test mIoU, paired differences with 95% intervals, associations, cost.

Seeds pair up: for a given seed, B, C and D share the initialisation and the data plan (and A its data), so the
difference of two arms is taken per seed and the interval is Student's t over those paired differences
(``mean ± t_{0.975, n-1} * sd / sqrt(n)``; with 3 seeds t = 4.30, so only large or very consistent differences
exclude 0). A difference is claimed only where its interval excludes 0 (marked ``*``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import stats

from sstparse import plots
from sstparse.domains import load_domains
from sstparse.train.benchmark import ARMS, DOMAINS, TARGET, ArmRun
from sstparse.train.config import JobConfig

# (minuend, subtrahend, domains): the comparisons the report makes, in the order it lists them.
COMPARISONS = (("C", "B", DOMAINS), ("C", "A", DOMAINS), ("B", "A", DOMAINS), ("D", "A", (TARGET,)),
               ("D", "C", (TARGET,)), ("A2", "A", DOMAINS), ("C", "C-LT", DOMAINS), ("C", "C-MST", DOMAINS),
               ("C", "C-MSE", DOMAINS), ("BDS", "B", DOMAINS), ("C", "BDS", DOMAINS), ("CK", "C", DOMAINS))


def paired_interval(diffs) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% Student-t interval of paired differences; low/high NaN for one seed."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("nan"), float("nan")
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _pct(v: float) -> str:
    return "–" if v != v else f"{100 * v:.1f}"


def _by(runs: list[ArmRun], protocol: str) -> dict[str, dict[int, ArmRun]]:
    out: dict[str, dict[int, ArmRun]] = {}
    for r in runs:
        if r.protocol == protocol:
            out.setdefault(r.arm, {})[r.seed] = r
    return out


def _ordered(arms) -> list[str]:
    return [a for a in ARMS if a in arms]


def score_table(runs: list[ArmRun], protocol: str = "passes", metric: str = "miou") -> str:
    """Per arm: test mIoU (%) per domain, mean over its seeds (their count in the last column)."""
    by = _by(runs, protocol)
    lines = ["| arm | " + " | ".join(DOMAINS) + " | mean | seeds | minutes per seed |",
             "|" + "---|" * (len(DOMAINS) + 4)]
    for arm in _ordered(by):
        rs = list(by[arm].values())
        cells = [_pct(np.mean([getattr(r, metric)[d] for r in rs])) if all(d in getattr(r, metric) for r in rs)
                 else "–" for d in DOMAINS]
        full = [np.mean([getattr(r, metric)[d] for d in DOMAINS]) for r in rs
                if all(d in getattr(r, metric) for d in DOMAINS)]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_pct(np.mean(full)) if full else '–'} | "
                     f"{len(rs)} | {np.mean([r.minutes for r in rs]):.0f} |")
    return "\n".join(lines)


def difference_table(runs: list[ArmRun], protocol: str = "passes", metric: str = "miou") -> str:
    """Paired differences (mIoU points): mean [95% interval] per domain, ``*`` where the interval excludes 0."""
    by = _by(runs, protocol)
    lines = ["| difference | " + " | ".join(DOMAINS) + " | seeds |", "|" + "---|" * (len(DOMAINS) + 2)]
    for hi, lo, doms in COMPARISONS:
        seeds = sorted(set(by.get(hi, {})) & set(by.get(lo, {})))
        if not seeds:
            continue
        cells = []
        for d in DOMAINS:
            # Only seeds where both sides scored d (a smoke run's A has two of its four models).
            pairs = [(getattr(by[hi][s], metric), getattr(by[lo][s], metric)) for s in seeds]
            diffs = [100 * (x[d] - y[d]) for x, y in pairs if d in x and d in y]
            if d not in doms or not diffs:
                cells.append("")
                continue
            m, a, b = paired_interval(diffs)
            ci = f" [{a:+.1f}, {b:+.1f}]" if a == a else ""
            cells.append(f"{m:+.1f}{ci}{' *' if a == a and (a > 0 or b < 0) else ''}")
        lines.append(f"| {hi} − {lo} | " + " | ".join(cells) + f" | {len(seeds)} |")
    return "\n".join(lines)


def association_table(runs: list[ArmRun], protocol: str = "passes") -> str:
    by = _by(runs, protocol)
    lines = ["| arm | argmax agreement | frequency-weighted | left/right merged | mean row TV | seeds |",
             "|---|---|---|---|---|---|"]
    for arm in _ordered(by):
        rs = [r for r in by[arm].values() if r.assoc]
        if not rs:
            continue
        m = {k: np.mean([r.assoc[k] for r in rs]) for k in rs[0].assoc}
        lines.append(f"| {arm} | {_pct(m['argmax_agreement'])}% | {_pct(m['argmax_weighted'])}% | "
                     f"{_pct(m['argmax_lr_merged'])}% | {m['tv']:.3f} | {len(rs)} |")
    return "\n".join(lines)


def cost_table(runs: list[ArmRun], protocol: str = "passes") -> str:
    by = _by(runs, protocol)
    lines = ["| arm | exported params | GFLOPs (512x512) | CPU ms | training steps |", "|---|---|---|---|---|"]
    for arm in _ordered(by):
        r = next(iter(by[arm].values()))
        lines.append(f"| {arm} | {r.params / 1e6:.3f} M | {r.flops / 1e9:.2f} | "
                     f"{np.mean([x.latency_ms for x in by[arm].values()]):.0f} | {r.steps:,} |")
    return "\n".join(lines)


def param_check(runs: list[ArmRun]) -> str:
    """B, C and D export exactly A's networks' parts: one backbone + decoder with four heads (B, C) or with
    syn_ppp's head (D = A's syn_ppp model)."""
    first = {r.arm: r for r in reversed(runs)}
    parts = []
    if "B" in first and "C" in first:
        parts.append(f"exported params B {first['B'].params:,} vs C {first['C'].params:,} "
                     f"({'equal' if first['B'].params == first['C'].params else 'DIFFERENT'})")
    if "A" in first and "D" in first:
        a = first["A"].params_by_model.get(TARGET)
        same = "equal" if a == first["D"].params else "DIFFERENT"
        parts.append(f"D {first['D'].params:,} vs A's {TARGET} model {a:,} ({same})")
    return "; ".join(parts)


def _heatmaps(out: Path, pairs: dict) -> list[Path]:
    domains = load_domains()
    return [plots.association_figure(learned, true, domains[a], domains[b], out / f"association_{a}_to_{b}.png")
            for (a, b), (learned, true) in pairs.items() if TARGET in (a, b)]


def write_report(out: Path, base: JobConfig, runs: list[ArmRun], steps: dict[str, tuple[float, float]],
                 command: str, pairs: dict | None = None) -> str:
    """``out``/report.md (returned too), with C's association heatmaps beside it when ``pairs`` are given.
    ``steps``: model size -> seconds per training step of (B, C)."""
    pictures = _heatmaps(out, pairs) if pairs else sorted(out.glob("association_*.png"))
    seeds = sorted({r.seed for r in runs})
    lines = [f"# SST benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"`{command}`; backbone {base.model.backbone}, {base.train.epochs} epochs x {base.data.epoch_size} "
             f"samples per domain, crop {base.data.crop_size}, batch {base.data.batch_size} x "
             f"{base.train.num_workers} workers, seeds {seeds}.", "",
             "## Equal passes (headline)", "",
             "Every multi-domain model sees each domain as often as that domain's single-domain model (A); its "
             "steps equal A's four models together. Test-split mIoU (%), checkpoint selected on validation:", "",
             score_table(runs, "passes"), "", "Paired differences (mIoU points), mean [95% t-interval] over seeds; "
             "`*`: the interval excludes 0:", "", difference_table(runs, "passes"), "",
             "With flip TTA:", "", score_table(runs, "passes", "miou_flip"), "",
             "Association recovery (learned M(a->b) against the exact P(b | a) on b's images):", "",
             association_table(runs, "passes"), "", "Cost:", "", cost_table(runs, "passes"), "", param_check(runs),
             ""]
    if any(r.protocol == "steps" for r in runs):
        lines += ["## Equal steps per model (secondary)", "", score_table(runs, "steps"), "",
                  difference_table(runs, "steps"), ""]
    if steps:
        lines += ["Training step time (forward + backward, one process, B and C interleaved on the same batch):", ""]
        lines += [f"- {what}: B {1000 * b:.0f} ms, C {1000 * c:.0f} ms, C/B {c / b:.2f}"
                  for what, (b, c) in steps.items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in pictures]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
