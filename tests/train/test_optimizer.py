"""The optimiser: the association's own parameter group (rate and decay), and no decay on norms and biases."""

from __future__ import annotations

import pytest

from sstparse.model.parser import ParserConfig
from sstparse.model.config import SSTConfig
from sstparse.model.sst import build_sst_model
from sstparse.train.config import OptimConfig
from sstparse.train.loop import build_optimizer

DOMS = {"a": 6, "b": 3}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_association_parameters_get_their_own_rate_and_no_decay(optimizer):
    model = build_sst_model(ParserConfig(), DOMS, SSTConfig())
    cfg = OptimConfig(optimizer=optimizer, lr=0.002, weight_decay=0.01)
    opt = build_optimizer(cfg, model, assoc_lr_mult=10.0)
    decay, no_decay, assoc = opt.param_groups
    mst = {id(p) for p in model.sst.mst.parameters()}
    assert {id(p) for p in assoc["params"]} == mst and len(mst) == 1 + 2  # scale + one residual per pair
    assert assoc["lr"] == pytest.approx(0.02) and assoc["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == pytest.approx(0.002) and decay["weight_decay"] == 0.01
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one group


def test_a_plain_network_has_no_association_group():
    model = build_sst_model(ParserConfig(), DOMS, SSTConfig(enabled=False))
    assert len(build_optimizer(OptimConfig(), model, assoc_lr_mult=10.0).param_groups) == 2
