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
from resnext_jax.layers import DOWNSAMPLES, STEMS
from resnext_jax.model import BLOCKS, SE_RULES, ResNet
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


def model_meta(model: ResNet, model_name: str | None, cfg: PretrainedCfg | None
               ) -> dict[str, Any]:
    """What a file (or a training workdir's ``model.json``) says about its model and
    weights."""
    return {"format": FORMAT, "model_name": model_name, "architecture": architecture(model),
            "pretrained_cfg": None if cfg is None else cfg_to_dict(cfg)}


def cfg_to_dict(cfg: PretrainedCfg) -> dict[str, Any]:
    return {**dataclasses.asdict(cfg), "transform": cfg.transform.to_dict()}


def cfg_from_dict(values: Mapping[str, Any]) -> PretrainedCfg:
    """The config a file records; anything but the fields' types is a ValueError."""
    if not isinstance(values, dict) or not isinstance(values.get("transform"), dict):
        raise ValueError("pretrained_cfg and its transform must be objects")
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    if set(values) - known:
        raise ValueError(f"unknown fields {sorted(set(values) - known)}")
    if not isinstance(values.get("name"), str) or not all(
            isinstance(values.get(k), str | None) for k in ("hf_hub_id", "url", "origin")):
        raise ValueError("name, hf_hub_id, url and origin must be strings")
    if not isinstance(values.get("top1"), int | float | None) or not _is_int(
            values.get("num_classes", 0)):
        raise ValueError("top1 must be a number and num_classes an integer")
    transform = values["transform"]
    for key in ("mean", "std"):
        if key in transform and not (isinstance(transform[key], list | tuple) and all(
                isinstance(v, int | float) for v in transform[key])):
            raise ValueError(f"transform.{key} must be a list of numbers")
    return PretrainedCfg(**{**values, "transform": Transform.from_dict(transform)})


# Bounds well above the zoo's largest architecture (SENet-154: stages of 3, 8, 36, 3 blocks,
# 64 groups, widths up to 2048), so that a forged file cannot make the loader build a model
# that takes minutes to trace or gigabytes to hold.
_INT_BOUNDS = {"cardinality": (1, 256), "base_width": (1, 1024), "stem_width": (1, 1024),
               "stem_features": (1, 2048), "num_classes": (0, 100_000), "in_chans": (1, 16)}
_MAX_BLOCKS, _MAX_STAGES, _MAX_PLANES = 64, 6, 4096
_CHOICES = {"block": BLOCKS, "stem": STEMS, "downsample": DOWNSAMPLES, "se": SE_RULES}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_meta(meta: Any, source: str) -> None:
    """A file's (or a workdir's ``model.json``) metadata as a schema, before anything is built:
    every problem is one :class:`WeightsFileError` line naming the field."""
    def fail(problem: str) -> None:
        raise WeightsFileError(f"{source}: invalid metadata: {problem}; nothing was loaded")

    if not isinstance(meta, dict):
        fail(f"expected an object, got {type(meta).__name__}")
    if not isinstance(meta.get("model_name"), str | None):
        fail("model_name must be a string or null")
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        fail("architecture must be an object")
    if set(arch) != set(ARCH_FIELDS):
        fail(f"architecture fields {sorted(set(arch) ^ set(ARCH_FIELDS))} are unknown or "
             "missing")
    for field, (low, high) in _INT_BOUNDS.items():
        if not _is_int(arch[field]) or not low <= arch[field] <= high:
            fail(f"{field}={arch[field]!r} is not an integer in [{low}, {high}]")
    for field, choices in _CHOICES.items():
        if arch[field] not in choices:
            fail(f"{field}={arch[field]!r} is not one of {choices}")
    layers, planes = arch["layers"], arch["stage_planes"]
    if not isinstance(layers, list) or not 1 <= len(layers) <= _MAX_STAGES or not all(
            _is_int(d) and 1 <= d <= _MAX_BLOCKS for d in layers):
        fail(f"layers={layers!r} must list 1-{_MAX_STAGES} stage depths in [1, {_MAX_BLOCKS}]")
    if not isinstance(planes, list) or len(planes) != len(layers) or not all(
            _is_int(p) and 1 <= p <= _MAX_PLANES for p in planes):
        fail(f"stage_planes={planes!r} must give each stage a width in [1, {_MAX_PLANES}]")
    cfg = meta.get("pretrained_cfg")
    if cfg is not None:
        try:
            cfg_from_dict(cfg)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            fail(f"pretrained_cfg: {str(err).splitlines()[0] if str(err) else err!r}")


def model_from_meta(meta: Mapping[str, Any], **overrides: Any) -> ResNet:
    """The model a file's metadata describes; ``overrides``: fields that shape nothing."""
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["architecture"].items()}
    return ResNet(**{**arch, **overrides})


def cfg_from_meta(meta: Mapping[str, Any]) -> PretrainedCfg | None:
    """The weight-set config a file's metadata records (checked by :func:`check_meta`)."""
    cfg = meta.get("pretrained_cfg")
    return cfg_from_dict(cfg) if cfg else None


def _digest(meta: bytes, variables: bytes) -> str:
    return hashlib.sha256(meta + b"\0" + variables).hexdigest()


def write(path: str | os.PathLike, variables: Mapping[str, Any], model: ResNet,
          cfg: PretrainedCfg | None = None, *, model_name: str | None = None) -> None:
    """Write ``variables`` (``params``, ``batch_stats``) of ``model`` with its metadata."""
    state = {k: jax.tree_util.tree_map(np.asarray, dict(v)) for k, v in variables.items()
             if k in ("params", "batch_stats")}
    meta = json.dumps(model_meta(model, model_name, cfg)).encode()
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
    try:
        meta = json.loads(meta_bytes)
    except (UnicodeDecodeError, ValueError) as err:
        raise WeightsFileError(f"{path}: its metadata is not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise WeightsFileError(f"{path}: format {found!r}, expected {FORMAT!r}")
    check_meta(meta, path)
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
