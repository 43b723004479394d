"""Pretrained weights for a model from any source: a weight-set name, a Hub id or a file.

The classifier head is the one place where a checkpoint may legitimately not fit: a model
built for another number of classes keeps the backbone and gets a fresh head only when the
caller opts in (``reset_head=True``; ``create_model`` opts in when ``num_classes`` is given).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from resnext_jax.model import ResNet
from resnext_jax.weights.errors import WeightsError, WeightsFileError
from resnext_jax.weights.hub import is_hub_id, resolve_hub
from resnext_jax.weights.io import SAFETENSORS, TORCH_PICKLES, read_state_dict, write_safetensors
from resnext_jax.weights.layouts import model_layout, strip_prefix
from resnext_jax.weights.mapping import LoadReport, flax_shapes, flax_to_torch, torch_to_flax
from resnext_jax.weights.native import NATIVE, check_architecture, read_weights
from resnext_jax.weights.pretrained import PRETRAINED, get_pretrained_cfg

Source = bool | str | os.PathLike


def resolve_source(source: Source, model_name: str | None = None,
                   cache_dir: str | os.PathLike | None = None) -> str:
    """Local file for ``source``: ``True`` (the model's default set), a weight-set name
    (``"seresnext50_32x4d.racm_in1k"``), a Hub id (``"timm/..."``) or a path."""
    if source is True:
        if model_name is None:
            raise ValueError("pretrained=True needs a model name")
        try:
            source = get_pretrained_cfg(model_name).name
        except KeyError:
            raise WeightsFileError(f"no known weight set for {model_name!r}; known sets: "
                                   f"{', '.join(PRETRAINED)}; or pass a file or Hub id") from None
    source = os.fspath(source)
    if os.path.exists(source):
        return source
    if source in PRETRAINED:
        cfg = PRETRAINED[source]
        if model_name is not None and cfg.model != model_name:
            raise WeightsError(f"weight set {source!r} is for model {cfg.model!r}, not "
                               f"{model_name!r}")
        if cfg.hf_hub_id is None:
            raise WeightsFileError(f"weight set {source!r} has no Hugging Face Hub copy: "
                                   f"download {cfg.url} and pass the file's path")
        return resolve_hub(cfg.hf_hub_id, cache_dir)
    if source.endswith(SAFETENSORS + TORCH_PICKLES + NATIVE):  # a path, not a Hub repo
        raise WeightsFileError(f"no such file: {source}")
    if is_hub_id(source):
        return resolve_hub(source, cache_dir)
    raise WeightsFileError(f"{source!r} is neither a file, a known weight set "
                           "(resnext_jax.list_pretrained()) nor a Hub id such as "
                           "'timm/seresnext50_32x4d.racm_in1k'")


def _has_head(model: ResNet) -> bool:
    return model.num_classes > 0 and not model.features_only


def _file_classes(tensors: Mapping[str, np.ndarray]) -> int | None:
    prefix = strip_prefix(tensors)
    for key in ("fc.weight", "last_linear.weight"):
        if prefix + key in tensors:
            return int(tensors[prefix + key].shape[0])
    return None


def _decide_head(model: ResNet, file_classes: int | None, reset_head: bool, path: str,
                 model_name: str | None) -> tuple[bool, bool]:
    """``(skip_file_head, make_new_head)``; raises when the head does not fit and the caller
    did not opt in to a new one."""
    if not _has_head(model):
        return True, False
    if file_classes == model.num_classes:
        return False, False
    name = repr(model_name) if model_name else "the model"
    found = f"a {file_classes}-class head" if file_classes else "no classifier head"
    if not reset_head:
        keep = f"pass num_classes={file_classes} to keep it, or " if file_classes else ""
        raise WeightsError(
            f"{path} has {found}, but {name} was built with num_classes={model.num_classes}; "
            f"{keep}opt in to a new, randomly initialised head with "
            f"create_model(..., num_classes={model.num_classes}, pretrained=...) or "
            "load_pretrained(..., reset_head=True); nothing was loaded")
    warnings.warn(f"{name}: the backbone is loaded from {path}, which has {found}; the "
                  f"classifier head fc is re-initialised for {model.num_classes} classes",
                  stacklevel=3)
    return True, True


def new_head(model: ResNet, rng: jax.Array) -> dict[str, Any]:
    """Fresh classifier parameters, initialised as the model's own ``fc``."""
    dense = nn.Dense(model.num_classes, dtype=model.dtype, param_dtype=model.param_dtype)
    return dict(dense.init(rng, jnp.zeros((1, model.num_features), model.dtype))["params"])


def load_pretrained(model: ResNet, source: Source, *, model_name: str | None = None,
                    reset_head: bool = False, layout: str = "auto",
                    rng: jax.Array | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[dict, LoadReport]:
    """``(variables, report)`` for ``model`` from ``source`` (see :func:`resolve_source`):
    a PyTorch checkpoint in any supported layout or our own ``.msgpack``. Strict: any key
    that does not fit raises :class:`WeightsError` naming it, and nothing is loaded."""
    path = resolve_source(source, model_name, cache_dir)
    if path.endswith(NATIVE):
        meta, saved = read_weights(path)
        check_architecture(meta, model, path, ignore=("num_classes",))
        classes = saved["params"]["fc"]["kernel"].shape[1] if "fc" in saved["params"] else None
        skip, fresh = _decide_head(model, classes, reset_head, path, model_name)
        variables, report = _native_variables(saved, model, skip, path, meta)
    else:
        tensors = read_state_dict(path)
        skip, fresh = _decide_head(model, _file_classes(tensors), reset_head, path, model_name)
        variables, report = torch_to_flax(tensors, model, layout=layout, skip_head=skip,
                                          source=path, model_name=model_name)
    if fresh:
        key = jax.random.key(0) if rng is None else rng
        variables["params"]["fc"] = new_head(model, key)
        report.notes.append(f"classifier: new head for {model.num_classes} classes")
    elif skip:
        report.notes.append("classifier: not loaded (the model has no head)")
    return variables, report


def _native_variables(saved: dict, model: ResNet, skip_head: bool, path: str,
                      meta: Mapping[str, Any]) -> tuple[dict, LoadReport]:
    flat = flatten_dict(saved)
    if skip_head:
        flat = {p: v for p, v in flat.items() if p[1] != "fc"}
    expected = {p: s for p, s in flax_shapes(model).items() if not (skip_head and p[1] == "fc")}
    bad = sorted("/".join(p) for p in set(flat) ^ set(expected))
    bad += sorted(f"{'/'.join(p)} (file {flat[p].shape}, model {s.shape})"
                  for p, s in expected.items() if p in flat and flat[p].shape != s.shape)
    if bad:
        raise WeightsError(f"{path} does not fit the model: {', '.join(bad[:8])}")
    variables = jax.tree_util.tree_map(jnp.asarray, saved)
    if skip_head:
        variables["params"].pop("fc", None)
    report = LoadReport(path, f"resnext_jax ({meta.get('model_name') or 'unnamed'})",
                        loaded=len(flat))
    return variables, report


def export_torch(path: str | os.PathLike, variables: Mapping[str, Any], model: ResNet, *,
                 layout: str | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Write ``variables`` as a PyTorch state dict in safetensors (``layout`` defaults to the
    model's: torchvision / timm / legacy) that ``model.load_state_dict`` accepts strictly."""
    layout = layout or model_layout(model)
    tensors = flax_to_torch(variables, model, layout=layout)
    meta = {"format": "pt", "layout": layout, "exported_by": "resnext_jax"}
    if model_name:
        meta["model"] = model_name
    write_safetensors(path, tensors, meta)
    return tensors
