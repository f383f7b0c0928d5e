"""Shared fixtures for the model tests: CPU settings, toy coarsening data, and small rendered synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sstparse.data.synth import render, sample_rng
from sstparse.domains import load_domains


@pytest.fixture(autouse=True)
def _cpu_settings():
    # One intra-op thread: these tensors are tiny, and on a shared 2-core machine two spinning OpenMP threads
    # made steps 10x slower than one. Restored after each test so other suites keep their settings.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- toy coarsening case
# Domain "fine": background + 5 coloured rectangles. Domain "coarse": the same images with classes merged by
# COARSE. So the true M(fine->coarse) is the merge (one-hot rows) and M(coarse->fine) splits each coarse class
# by the fine classes' pixel frequencies, which differ because the rectangle sizes differ.
COARSE = torch.tensor([0, 1, 1, 2, 2, 2])
SIZES = [(12, 12), (8, 8), (12, 10), (9, 9), (7, 7)]
COLORS = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]])


def toy_images(n: int, g: torch.Generator, hw: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.rand(n, 3, hw, hw, generator=g) * 0.4
    lab = torch.zeros(n, hw, hw, dtype=torch.long)
    for i in range(n):
        for k, (h, w) in enumerate(SIZES):
            y0 = int(torch.randint(0, hw - h, (1,), generator=g))
            x0 = int(torch.randint(0, hw - w, (1,), generator=g))
            img[i, :, y0:y0 + h, x0:x0 + w] = COLORS[k, :, None, None] * 0.8 + 0.2 * torch.rand(3, h, w, generator=g)
            lab[i, y0:y0 + h, x0:x0 + w] = k + 1
    return img, lab


def toy_true_association(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M(fine->coarse), M(coarse->fine)) measured on 256 toy images."""
    _, lab = toy_images(256, g)
    freq = torch.bincount(lab.flatten(), minlength=6).double()
    fine_to_coarse = torch.nn.functional.one_hot(COARSE, 3).double()
    coarse_to_fine = torch.zeros(3, 6, dtype=torch.float64)
    coarse_to_fine[COARSE, torch.arange(6)] = freq
    return fine_to_coarse, coarse_to_fine / coarse_to_fine.sum(1, keepdim=True)


@pytest.fixture(scope="session")
def toy():
    return toy_images, toy_true_association, COARSE


# ----------------------------------------------------------------------------------- rendered synthetic data
@pytest.fixture(scope="session")
def rendered_two_domains():
    """3 images each of syn_lip and syn_ppp rendered by the generator, downscaled to 64x48.

    Returns (images float (6,3,64,48) normalised, labels uint8 (6,64,48), domain_idx (6,), [LabelDomain, ...]).
    """
    doms = load_domains()
    names = ["syn_lip", "syn_ppp"]
    xs, ys, ds = [], [], []
    for k, name in enumerate(names):
        for i in range(3):
            r = render(doms[name], sample_rng(0, name, "train", i))
            xs.append(np.asarray(Image.fromarray(r.image).resize((48, 64), Image.BILINEAR)))
            ys.append(np.asarray(Image.fromarray(r.label(doms[name])).resize((48, 64), Image.NEAREST)))
            ds.append(k)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    return x, torch.from_numpy(np.stack(ys)), torch.tensor(ds), [doms[n] for n in names]
