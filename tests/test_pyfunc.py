"""The pyfunc users load: a fresh process without domain cards, labels equal to the training network's, flip TTA,
every accepted input form, and clear errors for bad input."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sstparse import tracking
from sstparse.data.augment import normalize
from sstparse.domains import load_domains
from sstparse.evaluate import TTA, predict_probs
from tests.serving import eager_labels, images, log_tiny


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return log_tiny(tmp_path_factory.mktemp("pyfunc"))


@pytest.fixture(scope="module")
def model(served):
    return tracking.load_pyfunc_model(served.uri, served.cfg.tracking_uri)


def test_fresh_process_loads_the_champion_without_domain_cards(served, tmp_path):
    paths = []
    for i, im in enumerate(images(1, [(50, 60), (64, 64)])):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(im).save(paths[-1])
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, numpy as np, pandas as pd
        m = mlflow.pyfunc.load_model("{served.uri}")
        arrays = [np.zeros((40, 52, 3), np.uint8), np.full((64, 33, 3), 200, np.uint8)]
        out = m.predict(arrays, params={{"domain": "syn_ppp", "flip_tta": True}})
        out += m.predict({paths!r}, params={{"domain": "syn_lip"}})
        out += m.predict(pd.DataFrame({{"path": {paths!r}}}), params={{"domain": "syn_lip", "batch_size": 1}})
        print(json.dumps({{"shapes": [list(o.shape) for o in out], "dtypes": sorted({{str(o.dtype) for o in out}}),
                          "max": [int(o.max()) for o in out], "ray": "ray" in sys.modules}}))
    """)
    # An empty card folder: any attempt to read a domain card would fail, so the layout JSON is all it used.
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.cfg.tracking_uri,
           "SSTPARSE_DATASETS": str(tmp_path / "no-cards")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["shapes"] == [[40, 52], [64, 33], [50, 60], [64, 64], [50, 60], [64, 64]]
    assert got["dtypes"] == ["uint8"] and not got["ray"]
    assert max(got["max"][:2]) < 7 and max(got["max"][2:]) < 20  # syn_ppp has 7 classes, syn_lip 20


def test_labels_equal_the_training_network(served, model):
    ims = images(2)
    for domain in ("syn_lip", "syn_ppp"):
        labels = model.predict(ims, params={"domain": domain, "batch_size": 2})
        assert [x.shape for x in labels] == [im.shape[:2] for im in ims]
        for im, lab in zip(ims, labels):
            assert (lab == eager_labels(served.model, im, domain)).mean() > 0.999
        assert len(np.unique(np.concatenate([x.ravel() for x in labels]))) > 1  # not a constant map


def test_flip_tta_averages_with_that_domains_swap(served, model):
    im = images(3, [(64, 48)])[0]
    domain = load_domains()["syn_lip"]
    x = torch.from_numpy(normalize(im))[None]
    with torch.no_grad():
        ref = predict_probs(lambda v: served.model.parser(v, "syn_lip"), x, domain, TTA(flip=True)).argmax(1)[0]
    (got,) = model.predict([im], params={"domain": "syn_lip", "flip_tta": True})
    assert (got == ref.numpy()).mean() > 0.999
    (plain,) = model.predict([im], params={"domain": "syn_lip"})
    assert (got != plain).any()  # the flip view changed something


def test_single_array_and_stacked_batch(model):
    im = images(4, [(48, 48)])[0]
    (one,) = model.predict(im, params={"domain": "syn_ppp"})
    two = model.predict(np.stack([im, im]), params={"domain": "syn_ppp"})
    assert one.shape == (48, 48) and all(np.array_equal(one, x) for x in two)


def test_table_and_scoring_server_input_forms(model, tmp_path):
    """What `mlflow models serve` hands predict for the README's payloads: a 1-d array of paths, a DataFrame of
    base64 image files, a dict of columns."""
    ims = images(6, [(48, 48), (40, 56)])
    paths, encoded = [], []
    for i, im in enumerate(ims):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
        encoded.append(base64.b64encode(open(paths[-1], "rb").read()).decode())
    want = model.predict(ims, params={"domain": "syn_ppp"})
    for given in (np.asarray(paths), pd.DataFrame({"image_b64": encoded}), {"path": np.asarray(paths)},
                  pd.DataFrame({"path": paths})):
        got = model.predict(given, params={"domain": "syn_ppp"})
        assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == 2, type(given)


def test_signature_declares_the_params(served, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.cfg.tracking_uri)  # MLflow's own lookups read the store here
    sig = mlflow.models.get_model_info(f"models:/{served.name}/1").signature
    assert {p.name: p.default for p in sig.params.params} == {"domain": None, "flip_tta": False, "batch_size": 8}


@pytest.mark.parametrize("data, params, match", [
    ([np.zeros((64, 64, 3), np.float32)], {"domain": "syn_ppp"}, r"image 0: expected an HxWx3 uint8.*float32"),
    ([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)], {"domain": "syn_ppp"},
     r"image 1: expected an HxWx3 uint8.*\(64, 64\)"),
    ([np.zeros((16, 64, 3), np.uint8)], {"domain": "syn_ppp"}, r"image 0: 16x64 is too small"),
    ([np.zeros((64, 64, 3), np.uint8)], {"domain": "lip"}, r"unknown domain 'lip'.*\['syn_lip', 'syn_ppp'\]"),
    ([np.zeros((64, 64, 3), np.uint8)], {}, r"'domain' is required.*\['syn_lip', 'syn_ppp'\]"),
    (["/no/such/image.png"], {"domain": "syn_ppp"}, r"/no/such/image.png: cannot read image"),
    (pd.DataFrame({"a": ["x"], "b": ["y"]}), {"domain": "syn_ppp"}, r"needs a 'path' or 'image_b64' column"),
    (pd.DataFrame({"image_b64": ["not base64!"]}), {"domain": "syn_ppp"}, r"image_b64 0: not base64"),
    (pd.DataFrame({"image_b64": ["aGVsbG8="]}), {"domain": "syn_ppp"}, r"image_b64 0: cannot read image"),
    (7, {"domain": "syn_ppp"}, r"expected a list of HxWx3 uint8 arrays or image paths, got int"),
    ([], {"domain": "syn_ppp"}, r"no images given"),
])
def test_bad_input_is_a_clear_error(model, data, params, match):
    with pytest.raises(ValueError, match=match):
        model.predict(data, params=params)


def test_undecodable_file_is_named(model, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken.jpg: cannot read image"):
        model.predict([str(bad)], params={"domain": "syn_ppp"})


def test_param_types_are_enforced_by_the_signature(model):
    with pytest.raises(mlflow.exceptions.MlflowException, match="flip_tta"):
        model.predict([np.zeros((64, 64, 3), np.uint8)], params={"domain": "syn_ppp", "flip_tta": "yes"})
