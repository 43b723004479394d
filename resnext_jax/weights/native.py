"""Our own weight files: Flax variables with their architecture, weight-set config and digest.

A ``.msgpack`` file holds ``meta`` (JSON: the format, the model's zoo name, the ``ResNet``
fields that shape the variables, and the weight-set config with its eval transform),
``variables`` (``params`` / ``batch_stats`` as msgpack) and ``sha256`` over both. The digest
is checked before anything is used, so a damaged file is refused instead of loading into a
different model; the architecture lets :func:`resnext_jax.load` rebuild the model from the
file alone and refuse a model it does not fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import serialization

from resnext_jax.files import atomic_write
from resnext_jax.model import ResNet
from resnext_jax.transforms import Transform
from resnext_jax.weights.errors import WeightsError, WeightsFileError
from resnext_jax.zoo import PretrainedCfg

FORMAT = "resnext_jax.weights/2"
SUFFIX = ".msgpack"
# The fields that decide the variable tree; dtype, lowering and the like do not.
ARCH_FIELDS = ("layers", "block", "cardinality", "base_width", "stem", "stem_width",
               "stem_features", "stage_planes", "downsample", "se", "num_classes", "in_chans")


def architecture(model: ResNet) -> dict[str, Any]:
    """The parameter-shaping fields of ``model`` as JSON-friendly values."""
    arch = {f: getattr(model, f) for f in ARCH_FIELDS}
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in arch.items()}


def model_meta(model: ResNet, model_name: str | None) -> dict[str, Any]:
    """What a file (or a training workdir's ``model.json``) says about its model."""
    cfg = model.pretrained_cfg
    return {"format": FORMAT, "model_name": model_name, "architecture": architecture(model),
            "pretrained_cfg": None if cfg is None else cfg_to_dict(cfg)}


def cfg_to_dict(cfg: PretrainedCfg) -> dict[str, Any]:
    return {**dataclasses.asdict(cfg), "transform": cfg.transform.to_dict()}


def cfg_from_dict(values: Mapping[str, Any]) -> PretrainedCfg:
    return PretrainedCfg(**{**values, "transform": Transform.from_dict(values["transform"])})


def model_from_meta(meta: Mapping[str, Any], **overrides: Any) -> ResNet:
    """The model a file's metadata describes; ``overrides``: fields that shape nothing."""
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["architecture"].items()}
    cfg = meta.get("pretrained_cfg")
    return ResNet(**{**arch, "pretrained_cfg": cfg_from_dict(cfg) if cfg else None,
                     **overrides})


def _digest(meta: bytes, variables: bytes) -> str:
    return hashlib.sha256(meta + b"\0" + variables).hexdigest()


def write(path: str | os.PathLike, variables: Mapping[str, Any], model: ResNet, *,
          model_name: str | None = None) -> None:
    """Write ``variables`` (``params``, ``batch_stats``) of ``model`` with its metadata."""
    state = {k: jax.tree_util.tree_map(np.asarray, dict(v)) for k, v in variables.items()
             if k in ("params", "batch_stats")}
    meta = json.dumps(model_meta(model, model_name)).encode()
    payload = serialization.msgpack_serialize(state)
    atomic_write(path, serialization.msgpack_serialize(
        {"meta": meta, "variables": payload, "sha256": _digest(meta, payload)}))


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, variables)`` of a file written by :func:`write`, its digest checked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"no such weights file: {path}")
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        outer = serialization.msgpack_restore(data)
        meta_bytes, payload, digest = outer["meta"], outer["variables"], outer["sha256"]
        if not isinstance(meta_bytes, bytes) or not isinstance(payload, bytes):
            raise TypeError("meta and variables must be bytes")
    except Exception as err:  # msgpack raises several types on damaged data
        raise WeightsFileError(f"{path} is not a readable resnext_jax weights file (truncated "
                               f"or damaged?): {type(err).__name__}: {err}") from err
    if digest != _digest(meta_bytes, payload):
        raise WeightsFileError(f"{path} is damaged: its contents do not match the sha256 "
                               "digest written with them; nothing was loaded")
    meta = json.loads(meta_bytes)
    if meta.get("format") != FORMAT:
        raise WeightsFileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta, serialization.msgpack_restore(payload)


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
