"""Promotion: the registered model's ``challenger`` becomes ``champion`` only if it parses the fixed validation
shards better.

Both versions are loaded as users load them (the pyfunc) and scored on every validation image of every head
they serve: mIoU per domain from a dataset-wide confusion matrix, and the mean over domains. The challenger wins
when its mean beats the champion's by more than ``margin`` (and reaches ``min_score`` if one is given). With no
champion yet, the challenger is compared with the best-scoring registered version of the same layout instead (by
the validation score recorded at registration), and the better of the two becomes champion; a name's first
version has nothing to beat and, without ``min_score``, is not scored. The comparison is itself an MLflow run
(both versions' scores, the decision), and its outcome is written on the challenger's version as tags, so every
alias move has a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from sstparse import registry, tracking
from sstparse.data.preview import samples
from sstparse.evaluate import confusion_matrix, scores
from sstparse.config import TrackingConfig

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass
class Comparison:
    model: str
    challenger: str | None                # version numbers; None: no challenger, nothing compared
    champion: str | None                  # the champion before; None: there was none
    rival: str | None = None              # what the challenger was compared with (champion, or best registered)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # version -> {domain: miou, "mean": ...}
    promoted: bool = False
    champion_after: str | None = None
    run_id: str | None = None

    def summary(self) -> str:
        if self.challenger is None:
            return f"{self.model}: no version holds {CHALLENGER!r}; champion stays v{self.champion}"
        against = (f"champion v{self.champion}" if self.champion else
                   f"v{self.rival} (no champion: the best registered score of this layout)" if self.rival else
                   "no champion and no other version of this layout")
        lines = [f"{self.model}: challenger v{self.challenger} vs {against}"]
        for version, s in self.scores.items():
            per = "  ".join(f"{d} {100 * v:.1f}%" for d, v in s.items() if d != "mean")
            lines.append(f"  v{version}: mean mIoU {100 * s['mean']:.2f}%  ({per})")
        if not self.scores:
            lines.append("  not scored: nothing to compare with (its training validation score is its "
                         f"{registry.SCORE_TAG!r} tag)")
        changed = self.champion_after and self.champion_after != self.champion
        lines.append(f"champion -> v{self.champion_after}" if changed else "champion unchanged")
        return "\n".join(lines)


def evaluate_version(model, data_root: str | Mapping[str, str], storage_options: dict | None = None,
                     flip_tta: bool = False, limit: int | None = None, skip_bad: bool = False) -> dict[str, float]:
    """mIoU of a loaded pyfunc on the validation split of each of its heads (and their mean). ``data_root``: one
    shard root, or domain -> root. ``skip_bad``: leave undecodable records out (else they are an error)."""
    heads = model.metadata.metadata["heads"]
    out = {}
    for domain, (start, stop) in heads.items():
        root = data_root if isinstance(data_root, str) else data_root[domain]
        matrix = torch.zeros(stop - start, stop - start, dtype=torch.int64)
        rows = list(samples(root, domain, "val", limit, storage_options, skip_bad))
        if not rows:
            raise ValueError(f"{root}: no validation shards for domain {domain!r} (the model's head)")
        for image, label in tqdm(rows, desc=f"{domain}", leave=False, disable=None):
            pred = model.predict([image], params={"domain": domain, "flip_tta": flip_tta})[0]
            matrix += confusion_matrix(torch.from_numpy(pred.astype(np.int64)),
                                       torch.from_numpy(label.astype(np.int64)), stop - start)
        out[domain] = float(scores(matrix)["miou"])
    out["mean"] = float(np.mean([out[d] for d in heads]))
    return out


def best_registered(cfg: TrackingConfig, name: str, version: str) -> str | None:
    """The other version of ``version``'s layout with the highest recorded validation score, or None."""
    scored = [(float(t[registry.SCORE_TAG]), int(v)) for v, t in registry.same_layout_versions(cfg, name, version)
              .items() if registry.SCORE_TAG in t]
    return str(max(scored)[1]) if scored else None


def promote(cfg: TrackingConfig, name: str, data_root: str | Mapping[str, str], margin: float = 0.0,
            flip_tta: bool = False, storage_options: dict | None = None, limit: int | None = None,
            min_score: float | None = None, skip_bad: bool = False) -> Comparison:
    """Compare ``name@challenger`` with ``name@champion`` (or, with no champion, the best registered version of its
    layout) and move ``champion`` to the better one."""
    challenger = tracking.get_alias(cfg, name, CHALLENGER)
    champion = tracking.get_alias(cfg, name, CHAMPION)
    if challenger is None and champion is not None:  # nothing new since the last promotion: not an error
        return Comparison(name, None, str(champion.version), champion_after=str(champion.version))
    if challenger is None:
        raise ValueError(f"{name}: no version holds the alias {CHALLENGER!r} (training and sweeps register one)")
    new = str(challenger.version)
    rival = str(champion.version) if champion else best_registered(cfg, name, new)
    result = Comparison(name, new, str(champion.version) if champion else None, rival)
    # A name's first version with no bar to reach is promoted unscored: no score could change the decision, and
    # scoring every validation image in the driver would cost minutes to hours on a real dataset.
    to_score = [new, rival] if rival else [new] if min_score is not None else []
    layouts = {}
    for v in dict.fromkeys(to_score):
        model = tracking.load_pyfunc_model(f"models:/{name}/{v}", cfg.tracking_uri)
        layouts[v] = sorted(model.metadata.metadata["heads"])
        result.scores[v] = evaluate_version(model, data_root, storage_options, flip_tta, limit, skip_bad)
    if rival and layouts[rival] != layouts[new]:
        raise ValueError(f"{name}: challenger v{new} serves {layouts[new]} but v{rival} serves {layouts[rival]}; "
                         "they cannot be compared")
    mean = result.scores[new]["mean"] if to_score else None
    beats = rival is None or (new != rival and mean > result.scores[rival]["mean"] + margin)
    result.promoted = beats and (min_score is None or mean >= min_score)
    result.champion_after = new if result.promoted else (result.champion or rival)
    result.run_id = record(cfg, result, data_root, margin, flip_tta, min_score)
    if result.champion_after and result.champion_after != result.champion:
        tracking.set_alias(cfg, name, CHAMPION, result.champion_after)
    tag_versions(cfg, result)
    return result


def tag_versions(cfg: TrackingConfig, c: Comparison) -> None:
    """The decision and both scores on the challenger's version (and on a rival that became champion instead)."""
    rival_mean = c.scores[c.rival]["mean"] if c.rival else None
    own = c.scores.get(c.challenger)
    tracking.describe_version(cfg, c.model, c.challenger, tags={
        "promotion.decision": "promoted" if c.promoted else "kept", "promotion.run_id": c.run_id,
        **({"promotion.mean_miou": f"{own['mean']:.4f}"} if own else {}),
        "promotion.compared_with": f"v{c.rival}" if c.rival else "none",
        **({"promotion.compared_mean_miou": f"{rival_mean:.4f}"} if rival_mean is not None else {})})
    if c.rival and c.champion_after == c.rival and c.champion is None:
        tracking.describe_version(cfg, c.model, c.rival, tags={
            "promotion.decision": f"champion: best registered version, challenger v{c.challenger} did not beat it",
            "promotion.run_id": c.run_id, "promotion.mean_miou": f"{rival_mean:.4f}"})


def settle_new_version(cfg: TrackingConfig, name: str, version: str, data_root: str | Mapping[str, str],
                       storage_options: dict | None = None, alias: str = CHALLENGER,
                       skip_bad: bool = False) -> Comparison | None:
    """A newly registered version gets ``alias``; a name with no champion yet is promoted at once (the same
    comparison as ``sstparse promote``), so the first version of a name answers to ``@champion``. The promoted
    version then holds ``champion`` only."""
    tracking.set_alias(cfg, name, alias, version)
    if alias != CHALLENGER or tracking.get_alias(cfg, name, CHAMPION) is not None:
        return None
    result = promote(cfg, name, data_root, storage_options=storage_options, skip_bad=skip_bad)
    if result.promoted:
        tracking.delete_alias(cfg, name, CHALLENGER)
    return result


def record(cfg: TrackingConfig, c: Comparison, data_root, margin: float, flip_tta: bool,
           min_score: float | None) -> str:
    run = tracking.start_run(cfg, f"promote-{c.model}", tags={"promotion": c.model,
                                                               "decision": "promoted" if c.promoted else "kept"})
    tracking.log_params(cfg, run, {"model": c.model, "challenger_version": c.challenger,
                                   "champion_version": c.champion or "none", "compared_with": c.rival or "none",
                                   "margin": margin, "min_score": min_score, "data_root": data_root,
                                   "flip_tta": flip_tta})
    for role, version in ((CHALLENGER, c.challenger), (CHAMPION if c.champion else "compared", c.rival)):
        if version in c.scores:
            tracking.log_metrics(cfg, run, {f"{role}/{d}/miou" if d != "mean" else f"{role}/mean_miou": v
                                            for d, v in c.scores[version].items()}, step=0)
    tracking.end_run(cfg, run)
    return run
