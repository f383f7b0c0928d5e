"""Pictures logged as artifacts: confusion matrices, learned vs true association heatmaps, prediction overlays,
sweep summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sstparse.data.preview import column, row, tile  # noqa: E402
from sstparse.domains import LabelDomain  # noqa: E402


def _heatmap(ax, m: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> None:
    ax.imshow(np.nan_to_num(m, nan=0.0), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=8)


def confusion_figure(matrix: np.ndarray, domain: LabelDomain, path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: ground truth)."""
    m = np.asarray(matrix, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = m / m.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    _heatmap(ax, norm, domain.classes, domain.classes, f"{domain.name}: confusion (row-normalised)")
    ax.set_xlabel("predicted", fontsize=7)
    ax.set_ylabel("ground truth", fontsize=7)
    return _save(fig, path)


def association_figure(learned: np.ndarray, true: np.ndarray | None, a: LabelDomain, b: LabelDomain,
                       path: str | Path) -> Path:
    """Learned M(a->b) beside the generator's exact P(b | a) when known."""
    n = 1 if true is None else 2
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 5.5), squeeze=False)
    _heatmap(axes[0, 0], learned, a.classes, b.classes, f"learned M({a.name} -> {b.name})")
    if true is not None:
        _heatmap(axes[0, 1], true, a.classes, b.classes, f"true P({b.name} | {a.name})")
    return _save(fig, path)


def overlay(image: np.ndarray, label: np.ndarray, domain: LabelDomain, alpha: float = 0.55) -> np.ndarray:
    """Colour-coded label map blended over an RGB image (ignore pixels left as they are)."""
    colours = domain.palette[label].astype(np.float32)
    out = image.astype(np.float32)
    keep = (label != domain.ignore_index) & (label != 0)
    out[keep] = (1 - alpha) * out[keep] + alpha * colours[keep]
    return out.clip(0, 255).astype(np.uint8)


def overlay_grid(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], domain: LabelDomain,
                 path: str | Path, height: int = 160) -> Path:
    """One line per sample: image | ground truth | prediction overlay."""
    lines = [row([tile(t, height) for t in (image, domain.palette[gt], overlay(image, pred, domain))])
             for image, gt, pred in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    column(lines).save(path)
    return path


def sweep_figures(rows: Sequence[dict], params: dict[str, bool], objective: str, out: str | Path) -> list[Path]:
    """A sweep's pictures: the objective against each searched parameter (log x where searched in log space),
    and the optimisation history (each trial's best in start order, with the running best)."""
    out = Path(out)
    done = [r for r in rows if r.get(objective) is not None and np.isfinite(r[objective])]
    y = np.array([r[objective] for r in done])
    paths = []
    if params:
        fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.0), squeeze=False)
        for ax, (name, log) in zip(axes[0], params.items()):
            ax.scatter([r[name] for r in done], y, s=18, c=[r["epochs"] for r in done], cmap="viridis")
            ax.set_xscale("log" if log else "linear")
            ax.set_xlabel(name, fontsize=8)
            ax.set_ylabel(objective, fontsize=7)
            ax.tick_params(labelsize=6)
        fig.suptitle("objective per trial (colour: epochs run)", fontsize=8)
        paths.append(_save(fig, out / "objective_vs_params.png"))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(y) + 1), y, "o", label="trial")
    ax.plot(range(1, len(y) + 1), np.maximum.accumulate(y) if len(y) else y, "-", label="best so far")
    ax.set_xlabel("trial (in start order)", fontsize=8)
    ax.set_ylabel(objective, fontsize=8)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "optimisation_history.png"))
    return paths


def time_to_accuracy_figure(history: Sequence[dict], domains: Sequence[str], path: str | Path) -> Path | None:
    """Validation mIoU against wall-clock minutes since the job started (each validated epoch is a point): mean
    over the domains, and each domain thin. None when the history has no timed validation."""
    points = [h for h in history if np.isfinite(h.get("val/mean_miou", np.nan)) and "time/elapsed_s" in h]
    if not points:
        return None
    minutes = [h["time/elapsed_s"] / 60 for h in points]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name in domains:
        ax.plot(minutes, [100 * h.get(f"val/{name}/miou", np.nan) for h in points], "-", lw=0.8, alpha=0.6,
                label=name)
    ax.plot(minutes, [100 * h["val/mean_miou"] for h in points], "o-", lw=2, color="black", label="mean")
    ax.set_xlabel("minutes since the job started", fontsize=8)
    ax.set_ylabel("validation mIoU (%)", fontsize=8)
    ax.set_xlim(left=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
