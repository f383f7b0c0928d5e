"""The MLflow pyfunc users load: images in, label maps out.

A "model from code": MLflow stores this file as the model's code and runs it at load time, so nothing is pickled.
Its two artifacts are the inference network as a torch.export program (``torch.export.load``, no pickle; dynamic
batch, height and width) and a small JSON layout (per head: channel slice, class names, colours, flip channel
swap; the input normalisation), written by :func:`sstparse.export.save_serving_artifacts`. No domain card is read:
a fresh process with ``sstparse`` installed and the model's folder is enough.

``predict(model_input, params)``:

* ``model_input``: a list of uint8 HxWx3 RGB arrays and/or image file paths; a single array (HxWx3, or NxHxWx3
  for N images) or path; or a pandas DataFrame (or a dict of columns) with a ``path`` column, a single column of
  paths, or an ``image_b64`` column of base64-encoded image files (how a JSON payload to ``mlflow models serve``
  carries images: see the README).
* ``params``: ``domain`` (which head; required when the model has several), ``flip_tta`` (average with the
  mirrored image, left/right classes swapped), ``batch_size`` (images of one size run together).
* returns a list of HxW uint8 label maps, one per image, each the size of its image.

Loading is for the serving side only: this module imports torch, numpy, PIL and :mod:`sstparse.evaluate`
(the same flip TTA that validation scores use), never Ray or the training code.
"""

from __future__ import annotations

import base64
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import mlflow
import numpy as np
import torch
from PIL import Image

from sstparse.evaluate import TTA, predict_probs

# predict()'s params as the model signature declares them (name, MLflow type, default): written once here.
PARAMS = (("domain", "string", None), ("flip_tta", "boolean", False), ("batch_size", "long", 8))
DEFAULT_PARAMS: dict[str, Any] = {name: default for name, _, default in PARAMS}


@dataclass(frozen=True)
class HeadSpec:
    """One head of the layout. Quacks like a LabelDomain where serving needs one (``flip_lut``/``num_classes``
    for flip TTA, ``palette``/``ignore_index`` for colourising)."""

    name: str
    start: int
    stop: int
    classes: tuple[str, ...]
    palette: np.ndarray   # (256, 3) uint8 colour lookup, unused values black, ignore white
    flip_lut: np.ndarray  # (256,) label lookup swapping this domain's left/right classes
    ignore_index: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_layout(cls, name: str, head: dict[str, Any]) -> "HeadSpec":
        n = len(head["classes"])
        palette = np.zeros((256, 3), np.uint8)
        palette[:n] = np.asarray(head["colors"], np.uint8)
        palette[head["ignore_index"]] = 255
        flip = np.arange(256, dtype=np.uint8)
        flip[:n] = np.asarray(head["flip_permutation"], np.uint8)
        return cls(name, head["channels"][0], head["channels"][1], tuple(head["classes"]), palette, flip,
                   int(head["ignore_index"]))


class Parser:
    """Multi-domain human parser behind MLflow's pyfunc interface (see the module docstring); mixed into
    :class:`SSTParserModel`."""

    def load_context(self, context: Any) -> None:
        self.layout: dict[str, Any] = json.loads(Path(context.artifacts["layout"]).read_text())
        self.heads = {n: HeadSpec.from_layout(n, h) for n, h in self.layout["heads"].items()}
        self.program = torch.export.load(context.artifacts["program"])
        # The first visible GPU when there is one (a Ray actor or Serve replica given num_gpus sees exactly its
        # own); SSTPARSE_DEVICE overrides.
        self.device = torch.device(os.environ.get("SSTPARSE_DEVICE") or
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self.program.module().to(self.device)
        spec = self.layout["input"]
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32, device=self.device)[:, None, None]
        self.std = torch.tensor(spec["std"], dtype=torch.float32, device=self.device)[:, None, None]
        self.min_size = int(spec["min_size"])

    def head(self, domain: str | None) -> HeadSpec:
        """The head for ``domain``; None is fine only for a one-head model."""
        if domain is None or domain == "":
            if len(self.heads) == 1:
                return next(iter(self.heads.values()))
            raise ValueError(f"params: 'domain' is required: this model has heads {sorted(self.heads)}")
        if domain not in self.heads:
            raise ValueError(f"params: unknown domain {domain!r}; this model has heads {sorted(self.heads)}")
        return self.heads[domain]

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[np.ndarray]:
        p = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        head = self.head(p["domain"])
        batch_size = int(p["batch_size"])
        if batch_size < 1:
            raise ValueError(f"params: batch_size must be >= 1, got {batch_size}")
        images = [self._checked(name, im) for name, im in as_images(model_input)]
        out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
        for idx in batches([im.shape for im in images], batch_size):
            labels = self.parse(np.stack([images[i] for i in idx]), head, bool(p["flip_tta"]))
            for i, lab in zip(idx, labels):
                out[i] = lab
        return out

    def _checked(self, name: str, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: expected an HxWx3 uint8 RGB array, got dtype {image.dtype} shape "
                             f"{tuple(image.shape)}")
        if min(image.shape[:2]) < self.min_size:
            raise ValueError(f"{name}: {image.shape[0]}x{image.shape[1]} is too small; both sides must be >= "
                             f"{self.min_size} px")
        return image

    @torch.no_grad()
    def parse(self, images: np.ndarray, head: HeadSpec, flip_tta: bool = False) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, H, W) uint8 label maps of ``head``."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = ((x - self.mean) / self.std).contiguous()
        probs = predict_probs(lambda v: self.net(v)[:, head.start:head.stop], x, head, TTA(flip=flip_tta))
        return probs.argmax(1).to(torch.uint8).cpu().numpy()


# MLflow warns, when a PythonModel subclass is defined, that predict's model_input has no type hint: none of its
# hint types fits "list of variable-size arrays or paths" (and a hint would make MLflow validate inputs its way).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)

    class SSTParserModel(Parser, mlflow.pyfunc.PythonModel):
        """The pyfunc: :class:`Parser` as an MLflow PythonModel."""


def as_images(model_input: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name for error messages, array) per image of any accepted input form."""
    if _is_dataframe(model_input):
        model_input = _from_columns({c: list(model_input[c]) for c in model_input.columns})
    elif isinstance(model_input, dict):  # the scoring server's {"inputs": {"path": [...]}} (or image_b64)
        model_input = _from_columns({k: list(np.atleast_1d(v)) for k, v in model_input.items()})
    if isinstance(model_input, (str, os.PathLike, _Encoded)):
        model_input = [model_input]
    elif isinstance(model_input, np.ndarray):
        # 4-d: a batch of images; 1-d of strings: paths, as the scoring server passes {"inputs": ["a.jpg"]}
        model_input = list(model_input) if model_input.ndim == 4 or model_input.dtype.kind in "OUS" else \
            [model_input]
    if not isinstance(model_input, (list, tuple)):
        raise ValueError(f"expected a list of HxWx3 uint8 arrays or image paths, got {type(model_input).__name__}")
    if not model_input:
        raise ValueError("no images given")
    for i, item in enumerate(model_input):
        if isinstance(item, _Encoded):
            yield f"image_b64 {i}", item.decode(i)
        elif isinstance(item, (str, os.PathLike)):
            yield str(item), read_image(item)
        elif isinstance(item, np.ndarray):
            yield f"image {i}", item
        else:
            raise ValueError(f"image {i}: expected an HxWx3 uint8 array or a path, got {type(item).__name__}")


class _Encoded(str):
    """A base64 string of an image file's bytes (the ``image_b64`` column): JSON payloads carry no bytes."""

    def decode(self, i: int) -> np.ndarray:
        try:
            data = base64.b64decode(self, validate=True)
        except ValueError as err:
            raise ValueError(f"image_b64 {i}: not base64 ({err})") from None
        return read_image(io.BytesIO(data), f"image_b64 {i}")


def _from_columns(columns: dict[str, list]) -> list:
    if "image_b64" in columns:
        return [_Encoded(v) for v in columns["image_b64"]]
    col = "path" if "path" in columns else next(iter(columns)) if len(columns) == 1 else None
    if col is None:
        raise ValueError(f"a table input needs a 'path' or 'image_b64' column (or a single column of paths); got "
                         f"columns {list(columns)}")
    return columns[col]


def read_image(path: str | os.PathLike | io.BytesIO, name: str | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{name or path}: cannot read image ({type(err).__name__}: {err})") from None


def batches(shapes: Sequence[tuple[int, ...]], batch_size: int) -> Iterator[list[int]]:
    """Indices of same-shape images in groups of at most ``batch_size`` (first-seen order)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size]


def _is_dataframe(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "columns")  # no pandas import for the common case


mlflow.models.set_model(SSTParserModel())
