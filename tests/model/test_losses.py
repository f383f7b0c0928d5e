"""Losses: definitions checked against hand computations; finite in edge cases; weights validated."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sstparse.model import losses as L
from sstparse.model.parser import ParserConfig
from sstparse.model.config import SSTConfig
from sstparse.model.sst import build_sst_model

DOMS = {"a": 6, "b": 3}


def test_local_labels_ignores_other_domains_values():
    y = torch.tensor([[[0, 5, 255]], [[0, 5, 2]]], dtype=torch.uint8)
    out = L.local_labels(y, torch.tensor([0, 1]), torch.tensor([6, 3]))
    assert out.tolist() == [[[0, 5, L.IGNORE]], [[0, L.IGNORE, 2]]]


def test_cross_entropy_is_the_pixel_mean_under_each_samples_own_head():
    logits = {"a": torch.randn(3, 6, 4, 5), "b": torch.randn(3, 3, 4, 5)}
    d = torch.tensor([0, 1, 0])
    y = L.local_labels(torch.randint(0, 6, (3, 8, 10)), d, torch.tensor([6, 3]))
    y[0, 0] = L.IGNORE
    total, per = L.domain_cross_entropy(logits, y, d)
    up = {k: F.interpolate(v, size=(8, 10), mode="bilinear", align_corners=False) for k, v in logits.items()}
    flat = torch.cat([F.cross_entropy(up["a" if k != 1 else "b"][k:k + 1], y[k:k + 1], ignore_index=L.IGNORE,
                                      reduction="none").flatten()[y[k].flatten() != L.IGNORE] for k in range(3)])
    assert torch.allclose(total, flat.mean(), atol=1e-5)
    assert set(per) == {"a", "b"}
    assert torch.allclose(per["b"], F.cross_entropy(up["b"][1:2], y[1:2], ignore_index=L.IGNORE), atol=1e-5)


def test_transfer_loss_is_zero_for_exact_association_and_log_c_for_uniform():
    # Domain b = coarsening of a by merge; head b predicts b's class of a's labels perfectly.
    merge = torch.tensor([0, 1, 1, 2, 2, 2])
    ya = torch.tensor([[[0, 1, 3, 3]]])  # labels the exact M(b->a) below can express
    pb = F.one_hot(merge[ya], 3).permute(0, 3, 1, 2).float()
    probs = {"a": torch.full((1, 6, 1, 4), 1 / 6), "b": pb}
    exact = {("b", "a"): torch.tensor([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]).float(),
             ("a", "b"): F.one_hot(merge, 3).float()}
    assert L.transfer_loss(probs, ya, torch.tensor([0]), exact).item() < 1e-5
    uniform = {k: torch.full_like(v, 1 / v.shape[1]) for k, v in exact.items()}
    assert math.isclose(L.transfer_loss(probs, ya, torch.tensor([0]), uniform).item(), math.log(6), rel_tol=1e-5)


def test_distillation_matches_hand_computation_and_trains_only_the_target_head():
    torch.manual_seed(1)
    za = torch.randn(1, 6, 2, 2, requires_grad=True)
    zt = torch.randn(1, 3, 2, 2, requires_grad=True)
    y = torch.tensor([[[0, 4], [5, L.IGNORE]]])
    m = torch.softmax(torch.randn(6, 3), 1)
    kd = L.distillation_loss({"a": za, "t": zt}, y, torch.tensor([0]), {("a", "t"): m}, ["t"], temperature=2.0)
    # Teacher on a's labelled pixels: a's ground truth mapped through M(a->t).
    valid = y.flatten() != L.IGNORE
    teacher = m[y.flatten()[valid]]
    log_s = F.log_softmax(zt / 2.0, 1).permute(0, 2, 3, 1).reshape(-1, 3)[valid]
    expected = (teacher * (teacher.log() - log_s)).sum(1).mean() * 4.0
    assert torch.allclose(kd, expected, atol=1e-5)
    kd.backward()
    assert za.grad is None and zt.grad is not None  # the teacher is detached
    # No sample from another domain: nothing to distil.
    zero = L.distillation_loss({"a": za, "t": zt}, y, torch.tensor([1]), {("a", "t"): m}, ["t"], 2.0)
    assert zero.item() == 0.0
    # A single head has no other head to learn from: zero, still connected to the head (DDP).
    alone = L.distillation_loss({"t": zt}, y % 3, torch.tensor([0]), {}, ["t"], 2.0)
    assert alone.item() == 0.0 and alone.requires_grad


def test_distillation_into_every_head_is_the_mean_of_per_target_losses():
    """Universal KD shares each source head's soft prediction between targets; per target it must still be
    KL(mean_{b != t} P_b @ M(b->t) || P_t) on other domains' labelled pixels, with b's ground truth on b's images."""
    torch.manual_seed(2)
    sizes, temperature = {"a": 4, "b": 3, "c": 5}, 1.5
    logits = {k: torch.randn(3, c, 4, 4) for k, c in sizes.items()}
    d = torch.tensor([0, 1, 2])
    y = torch.stack([torch.randint(0, c, (4, 4)) for c in sizes.values()])
    y[0, 0, 0] = L.IGNORE
    assoc = {(a, b): torch.softmax(torch.randn(sizes[a], sizes[b]), 1) for a in sizes for b in sizes if a != b}
    names = list(sizes)

    def by_hand(t):
        total = 0.0
        for i in (i for i in range(3) if names[i] != t):
            teacher = 0.0
            for b in (b for b in names if b != t):
                p = F.softmax(logits[b][i] / temperature, 0)
                if names[i] == b:
                    p = F.one_hot(y[i].clamp_min(0), sizes[b]).permute(2, 0, 1).float()
                teacher = teacher + torch.einsum("jhw,jk->khw", p, assoc[(b, t)]) / 2
            log_s = F.log_softmax(logits[t][i] / temperature, 0)
            kl = (teacher * (teacher.log() - log_s)).sum(0)
            total = total + kl[y[i] != L.IGNORE].sum()
        # A sum over the foreign pixels over (D - 1) x all labelled pixels of the batch (the CE's denominator).
        count = int((y != L.IGNORE).sum()) * (len(names) - 1)
        return total / count * temperature ** 2

    each = [L.distillation_loss(logits, y, d, assoc, [t], temperature) for t in names]
    assert all(torch.allclose(e, by_hand(t), atol=1e-5) for e, t in zip(each, names))
    both = L.distillation_loss(logits, y, d, assoc, names, temperature)
    assert torch.allclose(both, torch.stack(each).mean(), atol=1e-6)


@pytest.mark.parametrize("case", ["mixed", "one_domain", "all_ignored", "one_image", "dedicated", "universal_kd"])
def test_losses_are_finite(case):
    target = "a" if case == "dedicated" else None
    distils = case in ("dedicated", "universal_kd")
    model = build_sst_model(ParserConfig(), DOMS, SSTConfig(lambda_kd=1.0 if distils else 0.0),
                            target_domain=target).train()
    n = 1 if case == "one_image" else 4
    x = torch.randn(n, 3, 41, 29)
    y = torch.randint(0, 3, (n, 41, 29), dtype=torch.uint8)
    d = torch.zeros(n, dtype=torch.long) if case == "one_domain" else torch.arange(n) % 2
    if case == "all_ignored":
        y[:] = 255
    for _ in range(2):  # the second step runs with filled memories
        out = model(x, y, d)
        out["loss"].backward()
        scalars = {k: v for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}
        assert {"loss", "ce", "mse", "mse/relation", "mse/prototype", "mst"} <= set(scalars)
        assert ("kd" in scalars) == distils
        assert all(torch.isfinite(v) for v in scalars.values()), scalars
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert out["logits"]["a"].shape == (n, 6, 11, 8)


@pytest.mark.parametrize("lambda_kd", [0.0, 0.5])
def test_universal_distillation_teaches_every_head_from_other_domains_labels(lambda_kd):
    """A batch of domain-a images only: head b learns from a's labels through M(a->b) exactly when lambda_kd > 0
    (CE does not reach it and the transfer NLL detaches it), and the target-less model distils into both heads."""
    torch.manual_seed(0)
    model = build_sst_model(ParserConfig(), DOMS, SSTConfig(lambda_kd=lambda_kd)).train()
    assert model.distillation_targets() == (["a", "b"] if lambda_kd else [])
    out = model(torch.randn(2, 3, 40, 32), torch.randint(0, 6, (2, 40, 32)), torch.tensor([0, 0]))
    out["loss"].backward()
    head_b = model.parser.heads.heads["b"]
    grad = sum(float(p.grad.abs().sum()) for p in head_b.parameters())
    assert (grad > 0) == (lambda_kd > 0)
    assert ("kd" in out) == (lambda_kd > 0)


def test_total_loss_weights():
    parts = {"ce": torch.tensor(1.0), "mse": torch.tensor(2.0), "mst": torch.tensor(3.0), "kd": torch.tensor(4.0),
             "transfer": torch.tensor(10.0), "aux": torch.tensor(5.0)}
    w = SSTConfig(lambda_mse=0.5, lambda_mst=0.25, lambda_kd=0.1, temperature=3.0, lambda_transfer=0.5,
                  transfer_ramp=0.4, deep_supervision=0.2)
    assert math.isclose(L.total_loss(parts, w).item(), 1 + 1 + 0.75 + 0.4 + 5 + 1, rel_tol=1e-6)
    # Label transfer ramps in linearly over the first 40% of training.
    assert math.isclose(L.total_loss(parts, w, progress=0.1).item(), 1 + 1 + 0.75 + 0.4 + 1.25 + 1, rel_tol=1e-6)
    assert L.transfer_ramp(w, 0.0) == 0.0 and L.transfer_ramp(w, 0.9) == 1.0
    assert L.transfer_ramp(SSTConfig(transfer_ramp=0.0), 0.0) == 1.0
    with pytest.raises(ValueError, match="transfer_ramp"):
        SSTConfig(transfer_ramp=1.5)
    with pytest.raises(ValueError, match="lambda_mst"):
        SSTConfig(lambda_mst=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        SSTConfig(temperature=0.0)


@pytest.mark.parametrize("to_heads", [False, True])
def test_transfer_reaches_the_heads_only_when_asked(to_heads):
    zb = torch.randn(1, 3, 2, 2, requires_grad=True)
    m = torch.softmax(torch.randn(3, 6), 1).requires_grad_(True)
    probs = {"a": torch.full((1, 6, 2, 2), 1 / 6), "b": torch.softmax(zb, 1)}
    loss = L.transfer_loss(probs, torch.tensor([[[0, 1], [2, 3]]]), torch.tensor([0]), {("b", "a"): m}, to_heads)
    loss.backward()
    assert m.grad is not None and m.grad.abs().sum() > 0  # the association is always fitted
    assert (zb.grad is not None) == to_heads


def test_label_transfer_matches_hand_computation_and_skips_unconfident_rows():
    """On domain b's pixels labelled j, head a learns KL(M(b->a)[j] || softmax(head a)); rows of M whose largest
    entry is below the confidence are skipped; the sum is over (D - 1) x the batch's labelled pixels."""
    torch.manual_seed(3)
    za = torch.randn(2, 4, 2, 3, requires_grad=True)
    zb = torch.randn(2, 3, 2, 3, requires_grad=True)
    d = torch.tensor([0, 1])                      # image 0 is domain a's, image 1 domain b's
    y = torch.tensor([[[0, 1, 2], [3, 3, L.IGNORE]], [[0, 1, 2], [2, L.IGNORE, 0]]])
    m_ba = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.4, 0.3, 0.3, 0.0], [0.0, 0.2, 0.0, 0.8]])  # row 1: unconfident
    m_ab = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assoc = {("b", "a"): m_ba, ("a", "b"): m_ab}
    loss = L.label_transfer_loss({"a": za, "b": zb}, y, d, assoc, confidence=0.5)
    total = 0.0
    for img, (src, dst, m) in enumerate([("a", "b", m_ab), ("b", "a", m_ba)]):
        logp = F.log_softmax({"a": za, "b": zb}[dst][img], 0)
        for (h, w), j in ((hw, int(y[img][hw])) for hw in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]):
            if j == L.IGNORE or m[j].max() < 0.5:
                continue
            t = m[j]
            total = total + (torch.xlogy(t, t) - t * logp[:, h, w]).sum()
    assert torch.allclose(loss, total / (10 * 1), atol=1e-5)
    loss.backward()
    assert za.grad.abs().sum() > 0 and zb.grad.abs().sum() > 0
    # A head that already predicts the association's rows has nothing left to learn.
    yb = torch.tensor([[[0, 2]]])                                      # one domain-b image, confident rows only
    za_exact = torch.log(m_ba[yb[0]].permute(2, 0, 1).clamp_min(1e-12))[None]  # (1, 4, 1, 2)
    zero = L.label_transfer_loss({"a": za_exact, "b": torch.zeros(1, 3, 1, 2)}, yb, torch.tensor([1]), assoc, 0.5)
    assert abs(zero.item()) < 1e-6


def test_label_transfer_trains_heads_from_other_domains_images_only_when_weighted():
    torch.manual_seed(0)
    for lam in (0.0, 0.5):
        model = build_sst_model(ParserConfig(), DOMS, SSTConfig(transfer_confidence=0.0, lambda_transfer=lam,
                                                                lambda_mst=0.0, lambda_mse=0.0)).train()
        out = model(torch.randn(2, 3, 40, 32), torch.randint(0, 6, (2, 40, 32)), torch.tensor([0, 0]))
        out["loss"].backward()
        grad = sum(float(p.grad.abs().sum()) for p in model.parser.heads.heads["b"].parameters())
        assert (grad > 0) == (lam > 0) and ("transfer" in out) == (lam > 0)
