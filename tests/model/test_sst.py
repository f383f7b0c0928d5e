"""SST modules: associations are row-stochastic and learn the true association on a toy coarsening; memories,
relation targets and attention masks behave as documented."""

from __future__ import annotations

import pytest
import torch

from sstparse.model.parser import ParserConfig
from sstparse.model.config import SSTConfig
from sstparse.model.sst import build_sst_model

DOMS = {"a": 6, "b": 3, "c": 4}


def _batch(n=3, h=32, w=24):
    y = torch.randint(0, 3, (n, h, w), dtype=torch.uint8)
    return torch.randn(n, 3, h, w), y, torch.arange(n) % len(DOMS)


def _assert_row_stochastic(model):
    for a in DOMS:
        for b in DOMS:
            if a == b:
                continue
            m = model.association(a, b)
            assert m.shape == (DOMS[a], DOMS[b])
            assert (m >= 0).all()
            assert torch.allclose(m.sum(1), torch.ones(DOMS[a]), atol=1e-5)


def test_association_is_row_stochastic_before_and_after_training():
    model = build_sst_model(ParserConfig(), DOMS).train()
    _assert_row_stochastic(model)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        out = model(*_batch())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    _assert_row_stochastic(model)
    for (a, b), m in out["assoc"].items():  # the in-graph matrices the losses used
        assert torch.allclose(m.sum(1), torch.ones(DOMS[a]), atol=1e-5)
    with pytest.raises(KeyError):
        model.association("a", "a")
    with pytest.raises(KeyError):
        model.association("a", "zzz")


def _tv(m: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean total-variation distance between matching rows."""
    return 0.5 * (m.double() - truth).abs().sum(1).mean().item()


def test_association_moves_to_the_true_association_on_a_coarsening(toy):
    toy_images, toy_truth, coarse = toy
    g = torch.Generator().manual_seed(0)
    fine_to_coarse, coarse_to_fine = toy_truth(g)
    model = build_sst_model(ParserConfig(), {"fine": 6, "coarse": 3},
                            SSTConfig(lambda_mse=0.1, lambda_mst=1.0)).train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    tv0 = (_tv(model.association("fine", "coarse"), fine_to_coarse),
           _tv(model.association("coarse", "fine"), coarse_to_fine))
    for _ in range(120):
        xa, ya = toy_images(4, g)
        xb, yb = toy_images(4, g)
        out = model(torch.cat([xa, xb]), torch.cat([ya, coarse[yb]]), torch.tensor([0] * 4 + [1] * 4))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    f2c, c2f = model.association("fine", "coarse"), model.association("coarse", "fine")
    tv1 = (_tv(f2c, fine_to_coarse), _tv(c2f, coarse_to_fine))
    assert tv0[0] > 0.5 and tv0[1] > 0.5  # starts near uniform, far from the truth
    assert tv1[0] < 0.15 * tv0[0] and tv1[1] < 0.15 * tv0[1], (tv0, tv1)
    assert f2c.argmax(1).tolist() == coarse.tolist()  # every fine class maps to its coarse parent
    # coarse -> fine: mass stays inside the right group, largest on the most frequent member
    assert c2f.argmax(1).tolist() == [0, 1, 3]
    assert c2f[1, 1:3].sum() > 0.7 and c2f[2, 3:].sum() > 0.7


def test_memory_updates_only_present_classes_and_only_in_training():
    model = build_sst_model(ParserConfig(), DOMS).train()
    y = torch.zeros(1, 32, 48, dtype=torch.long)
    y[:, :, 16:32] = 1
    y[:, :, 32:] = 2  # three vertical stripes of domain "a": 0 | 1 | 2
    model(torch.randn(1, 3, 32, 48), y, torch.tensor([0]))
    sst = model.sst
    assert sst.proto_seen.tolist() == [1, 1, 1] + [0] * 10
    assert torch.allclose(sst.prototypes[:3].norm(dim=1), torch.ones(3))
    # Relation target: 0 touches only 1, 1 touches 0 and 2 equally, 2 touches only 1.
    expected = torch.tensor([[0, 1, 0], [0.5, 0, 0.5], [0, 1, 0]])
    assert torch.allclose(sst.adjacency[:3, :3], expected)
    assert sst.adjacency_seen.tolist() == [1, 1, 1] + [0] * 10
    before = {k: v.clone() for k, v in sst.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48), y, torch.tensor([0]))
    assert all(torch.equal(before[k], v) for k, v in sst.state_dict().items())
    # The memories are persistent buffers: checkpointed and restored with the model.
    assert {k for k in before if "." not in k} == {"prototypes", "proto_seen", "adjacency", "adjacency_seen"}


def test_relation_attention_stays_inside_a_domain_and_skips_itself():
    model = build_sst_model(ParserConfig(), DOMS).train()
    sst = model.sst
    z = torch.nn.functional.normalize(torch.randn(13, 128), dim=-1)
    z_hat, log_attn = sst.mse(z, sst.relation_allowed)
    attn = log_attn.exp()
    assert torch.allclose(attn.sum(1), torch.ones(13), atol=1e-5)
    assert attn.diagonal().max() < 1e-6
    assert attn[:6, 6:].max() < 1e-6 and attn[6:9, :6].max() < 1e-6 and attn[9:, :9].max() < 1e-6
    assert torch.allclose(z_hat.norm(dim=1), torch.ones(13), atol=1e-5)


def test_single_domain_has_no_transfer():
    model = build_sst_model(ParserConfig(), {"only": 5}).train()
    assert model.sst.mst is None
    out = model(torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32)), torch.zeros(2, dtype=torch.long))
    assert "mst" not in out and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(KeyError):
        model.association("only", "only")
    with pytest.raises(ValueError, match="dedicated mode"):
        build_sst_model(ParserConfig(), {"only": 5}, target_domain="only")


def test_config_validation():
    with pytest.raises(ValueError, match="scales"):
        SSTConfig(scales=("c6",))
    with pytest.raises(ValueError, match="ema_momentum"):
        SSTConfig(ema_momentum=1.0)
    with pytest.raises(ValueError, match="transfer_confidence"):
        SSTConfig(transfer_confidence=1.5)
    with pytest.raises(ValueError):
        SSTConfig(adjacency_radius=0)
    with pytest.raises(ValueError, match="target_domain"):
        build_sst_model(ParserConfig(), DOMS, target_domain="zzz")


@pytest.mark.slow
def test_learned_association_is_semantic_on_rendered_domains():
    """syn_lip vs syn_ppp (not a coarsening: garments vs body parts), 600 CPU steps at 96x72 (~1-2 min).

    The big classes must map to the right PASCAL-Person-Part class, e.g. face and hair -> head, pants -> upper
    legs. With ``transfer_to_heads=True`` this run converged to a permutation (face -> upper-arms) instead.
    """
    import numpy as np
    from PIL import Image

    from sstparse import atoms
    from sstparse.data.synth import render, sample_rng, true_association
    from sstparse.domains import load_domains

    doms = load_domains()
    lip, ppp = doms["syn_lip"], doms["syn_ppp"]
    data, hist = [], {}
    for dom in (lip, ppp):
        xs, ys, hist[dom.name] = [], [], np.zeros(atoms.NUM_ATOMS)
        for i in range(48):
            r = render(dom, sample_rng(0, dom.name, "train", i))
            a = np.asarray(Image.fromarray(r.atoms.astype(np.int32)).resize((72, 96), Image.NEAREST))
            hist[dom.name] += np.bincount(a.ravel(), minlength=atoms.NUM_ATOMS)
            xs.append(np.asarray(Image.fromarray(r.image).resize((72, 96), Image.BILINEAR)))
            ys.append(np.asarray(Image.fromarray(r.label(dom)).resize((72, 96), Image.NEAREST)))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
        data.append((x, torch.from_numpy(np.stack(ys))))
    # M(a->b) is fitted on b's images: its truth is taken over b's atoms.
    truth_lp = torch.tensor(np.nan_to_num(true_association(lip, ppp, hist["syn_ppp"])))
    truth_pl = torch.tensor(np.nan_to_num(true_association(ppp, lip, hist["syn_lip"])))
    seen = truth_lp.sum(1) > 0
    model = build_sst_model(ParserConfig(), [lip, ppp], SSTConfig(lambda_mse=0.1, lambda_mst=0.1)).train()
    tv0 = (_tv(model.association("syn_lip", "syn_ppp")[seen], truth_lp[seen]),
           _tv(model.association("syn_ppp", "syn_lip"), truth_pl))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        ia, ib = torch.randint(0, 48, (4,), generator=g), torch.randint(0, 48, (4,), generator=g)
        out = model(torch.cat([data[0][0][ia], data[1][0][ib]]), torch.cat([data[0][1][ia], data[1][1][ib]]),
                    torch.tensor([0] * 4 + [1] * 4))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    m_lp = model.association("syn_lip", "syn_ppp")
    tv1 = (_tv(m_lp[seen], truth_lp[seen]), _tv(model.association("syn_ppp", "syn_lip"), truth_pl))
    assert tv1[0] < 0.7 * tv0[0] and tv1[1] < 0.7 * tv0[1], (tv0, tv1)
    big = ["hair", "upper-clothes", "coat", "pants", "face", "left-arm", "right-arm", "left-leg", "right-leg"]
    rows = [lip.index(c) for c in big]
    # Judged on the person classes: thin parts at 96x72 still lose mass to background (head b misses them on
    # a's images), which is a recognition error, not a wrong association.
    assert m_lp[rows, 1:].argmax(1).tolist() == truth_lp[rows, 1:].argmax(1).tolist(), m_lp[rows]


def test_deep_supervision_ablation_is_training_only():
    """B + deep supervision: an auxiliary CE classifier on MSA's embedding trains with the plain network, reaches
    the parser, and is gone at export (the exported network equals the plain one's)."""
    from sstparse.model.sst import inference_model

    torch.manual_seed(0)
    model = build_sst_model(ParserConfig(), DOMS, SSTConfig(enabled=False, deep_supervision=0.1,
                                                            embed_dim=16)).train()
    x, y, d = _batch()
    out = model(x, y, d)
    assert "aux" in out and torch.isfinite(out["aux"]) and "mst" not in out
    assert torch.allclose(out["loss"], out["ce"] + 0.1 * out["aux"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    plain = build_sst_model(ParserConfig(), DOMS, SSTConfig(enabled=False))
    assert sum(p.numel() for p in inference_model(model).parameters()) == \
        sum(p.numel() for p in inference_model(plain).parameters())
    # With SST modules present the ablation is not built (SST has its own feature-level losses).
    assert build_sst_model(ParserConfig(), DOMS, SSTConfig(deep_supervision=0.1)).aux is None
