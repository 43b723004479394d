"""Our own weight files: Flax variables plus the architecture, in msgpack.

The architecture (the ``ResNet`` fields that shape parameters) travels with the weights, so
loading into a different model fails with the differing fields named, and
:func:`load_model` can rebuild the model from the file alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from resnext_jax.model import ResNet
from resnext_jax.weights.errors import WeightsError, WeightsFileError

FORMAT = "resnext_jax.weights/1"
NATIVE = (".msgpack",)
# The fields that decide the variable tree; dtype, lowering and the like do not.
ARCH_FIELDS = ("layers", "block", "cardinality", "base_width", "stem", "stem_width",
               "stem_features", "stage_planes", "downsample", "se", "num_classes", "in_chans")


def architecture(model: ResNet) -> dict[str, Any]:
    """The parameter-shaping fields of ``model`` as JSON-friendly values."""
    arch = {f: getattr(model, f) for f in ARCH_FIELDS}
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in arch.items()}


def save_weights(path: str | os.PathLike, variables: Mapping[str, Any], model: ResNet, *,
                 model_name: str | None = None, pretrained: str | None = None) -> None:
    """Write ``variables`` (``params``, ``batch_stats``) of ``model`` with its architecture."""
    meta = {"format": FORMAT, "model_name": model_name, "pretrained": pretrained,
            "architecture": architecture(model)}
    state = {k: jax.tree_util.tree_map(np.asarray, dict(v)) for k, v in variables.items()
             if k in ("params", "batch_stats")}
    data = serialization.msgpack_serialize({"meta": json.dumps(meta), "variables": state})
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as stream:  # write then rename: a crash never leaves half a file
        stream.write(data)
    os.replace(tmp, path)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, variables)`` of a file written by :func:`save_weights`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"no such weights file: {path}")
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        payload = serialization.msgpack_restore(data)
        meta = json.loads(payload["meta"])
        variables = payload["variables"]
    except Exception as err:  # msgpack raises several types on truncated data
        raise WeightsFileError(f"{path} is not a readable resnext_jax weights file (truncated "
                               f"or corrupted?): {type(err).__name__}: {err}") from err
    if meta.get("format") != FORMAT:
        raise WeightsFileError(f"{path}: unknown format {meta.get('format')!r}, "
                               f"expected {FORMAT!r}")
    return meta, variables


def check_architecture(meta: Mapping[str, Any], model: ResNet, path: str,
                       ignore: tuple[str, ...] = ()) -> None:
    """Raise unless the file's architecture equals ``model``'s (``ignore``: fields allowed
    to differ, e.g. ``num_classes`` when the head is replaced)."""
    saved, wanted = meta["architecture"], architecture(model)
    diff = [f"{k}: file {saved.get(k)!r}, model {wanted[k]!r}" for k in ARCH_FIELDS
            if k not in ignore and saved.get(k) != wanted[k]]
    if diff:
        name = meta.get("model_name") or "a different architecture"
        raise WeightsError(f"{path} holds weights of {name}, which differs from the model: "
                           + "; ".join(diff))


def load_weights(path: str | os.PathLike, model: ResNet) -> dict[str, Any]:
    """Variables from ``path`` for ``model``; the architectures must match exactly."""
    meta, variables = read_weights(path)
    check_architecture(meta, model, os.fspath(path))
    return jax.tree_util.tree_map(jnp.asarray, variables)


def load_model(path: str | os.PathLike, **overrides: Any) -> tuple[ResNet, dict[str, Any]]:
    """Rebuild the model saved in ``path`` (``overrides``: non-architecture fields such as
    ``dtype``) and return it with its variables."""
    meta, variables = read_weights(path)
    changed = sorted(set(overrides) & set(ARCH_FIELDS))
    if changed:
        raise ValueError(f"load_model cannot change architecture fields {changed}; use "
                         "create_model(name, pretrained=path, ...) to replace the head")
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["architecture"].items()}
    return ResNet(**arch, **overrides), jax.tree_util.tree_map(jnp.asarray, variables)
