"""Promotion: the registered model's ``challenger`` becomes ``champion`` only if it parses the fixed validation
shards better.

Both versions are loaded as users load them (the pyfunc) and scored on every validation image of every head
they serve: mIoU per domain from a dataset-wide confusion matrix, and the mean over domains. The challenger wins
when its mean beats the champion's by more than ``margin`` (or when there is no champion yet). The comparison is
itself an MLflow run (both versions' scores, the decision), so every alias move has a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from sstparse import tracking
from sstparse.data.preview import samples
from sstparse.evaluate import confusion_matrix, scores
from sstparse.tracking import TrackingConfig

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass
class Comparison:
    model: str
    challenger: str                       # version numbers
    champion: str | None                  # None: there was no champion
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # version -> {domain: miou, "mean": ...}
    promoted: bool = False
    run_id: str | None = None

    def summary(self) -> str:
        lines = [f"{self.model}: challenger v{self.challenger} vs champion "
                 f"{'v' + self.champion if self.champion else '(none)'}"]
        for version, s in self.scores.items():
            per = "  ".join(f"{d} {100 * v:.1f}%" for d, v in s.items() if d != "mean")
            lines.append(f"  v{version}: mean mIoU {100 * s['mean']:.2f}%  ({per})")
        lines.append(f"champion -> v{self.challenger}" if self.promoted else "champion unchanged")
        return "\n".join(lines)


def evaluate_version(model, data_root: str, storage_options: dict | None = None, flip_tta: bool = False,
                     limit: int | None = None) -> dict[str, float]:
    """mIoU of a loaded pyfunc on the validation split of each of its heads (and their mean)."""
    heads = model.metadata.metadata["heads"]
    out = {}
    for domain, (start, stop) in heads.items():
        matrix = torch.zeros(stop - start, stop - start, dtype=torch.int64)
        rows = list(samples(data_root, domain, "val", limit, storage_options))
        if not rows:
            raise ValueError(f"{data_root}: no validation shards for domain {domain!r} (the model's head)")
        for image, label in tqdm(rows, desc=f"{domain}", leave=False, disable=None):
            pred = model.predict([image], params={"domain": domain, "flip_tta": flip_tta})[0]
            matrix += confusion_matrix(torch.from_numpy(pred.astype(np.int64)),
                                       torch.from_numpy(label.astype(np.int64)), stop - start)
        out[domain] = float(scores(matrix)["miou"])
    out["mean"] = float(np.mean([out[d] for d in heads]))
    return out


def promote(cfg: TrackingConfig, name: str, data_root: str, margin: float = 0.0, flip_tta: bool = False,
            storage_options: dict | None = None, limit: int | None = None) -> Comparison:
    """Compare ``name@challenger`` with ``name@champion`` and move ``champion`` if the challenger is better."""
    challenger = tracking.get_alias(cfg, name, CHALLENGER)
    if challenger is None:
        raise ValueError(f"{name}: no version holds the alias {CHALLENGER!r} (a sweep registers one)")
    champion = tracking.get_alias(cfg, name, CHAMPION)
    result = Comparison(name, str(challenger.version), str(champion.version) if champion else None)
    versions = [result.challenger] + ([result.champion] if champion else [])
    layouts = {}
    for v in dict.fromkeys(versions):
        model = tracking.load_pyfunc_model(f"models:/{name}/{v}", cfg.tracking_uri)
        layouts[v] = sorted(model.metadata.metadata["heads"])
        result.scores[v] = evaluate_version(model, data_root, storage_options, flip_tta, limit)
    if champion and layouts[result.champion] != layouts[result.challenger]:
        raise ValueError(f"{name}: challenger v{result.challenger} serves {layouts[result.challenger]} but champion "
                         f"v{result.champion} serves {layouts[result.champion]}; they cannot be compared")
    best = result.scores[result.challenger]["mean"]
    result.promoted = champion is None or (result.challenger != result.champion and
                                           best > result.scores[result.champion]["mean"] + margin)
    result.run_id = record(cfg, result, data_root, margin, flip_tta)
    if result.promoted:
        tracking.set_alias(cfg, name, CHAMPION, result.challenger)
    return result


def record(cfg: TrackingConfig, c: Comparison, data_root: str, margin: float, flip_tta: bool) -> str:
    run = tracking.start_run(cfg, f"promote-{c.model}", tags={"promotion": c.model,
                                                               "decision": "promoted" if c.promoted else "kept"})
    tracking.log_params(cfg, run, {"model": c.model, "challenger_version": c.challenger,
                                   "champion_version": c.champion or "none", "margin": margin,
                                   "data_root": data_root, "flip_tta": flip_tta})
    for role, version in ((CHALLENGER, c.challenger), (CHAMPION, c.champion)):
        if version:
            tracking.log_metrics(cfg, run, {f"{role}/{d}/miou" if d != "mean" else f"{role}/mean_miou": v
                                            for d, v in c.scores[version].items()}, step=0)
    tracking.end_run(cfg, run)
    return run
