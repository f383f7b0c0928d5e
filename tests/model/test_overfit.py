"""The whole training model (CE + MSE + MST) fits a few rendered synthetic images of two domains."""

from __future__ import annotations

import torch

from sstparse.model.parser import ParserConfig
from sstparse.model.config import SSTConfig
from sstparse.model.sst import build_sst_model, inference_model


def test_overfit_two_rendered_domains(rendered_two_domains):
    x, y, d, domains = rendered_two_domains
    model = build_sst_model(ParserConfig(), domains, SSTConfig()).train()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(220):
        out = model(x, y, d)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    net = inference_model(model)  # evaluated as exported: eval-mode BN, no SST modules
    with torch.no_grad():
        logits = net(x)
    for k, dom in enumerate(domains):
        pred = logits[dom.name][d == k].argmax(1)
        truth = y[d == k].long()
        acc = (pred == truth).float().mean().item()
        fg = truth > 0  # background is ~85% of pixels: also require the people themselves to be parsed
        fg_acc = (pred[fg] == truth[fg]).float().mean().item()
        assert acc > 0.9 and fg_acc > 0.5, (dom.name, acc, fg_acc)
