"""``resnext_jax.load``: a model and its weights from any source, in one shape.

Sources: a model name (its default weight set), a weight-set name
(``"seresnext50_32x4d.racm_in1k"``), a Hugging Face Hub id (``"timm/..."``), a PyTorch
checkpoint (``.safetensors``; ``.pth`` / ``.bin`` need torch), a file written by
:meth:`Pretrained.save`, or a training workdir. The architecture comes from the source when
it says (weight sets, our files, workdirs, a checkpoint whose tensors fit exactly one zoo
model) or from ``model``; loading is strict, so anything that does not fit raises
:class:`~resnext_jax.weights.WeightsError` naming it, and nothing is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import unflatten_dict

from resnext_jax import zoo
from resnext_jax.errors import UsageError
from resnext_jax.model import ResNet
from resnext_jax.weights import native
from resnext_jax.weights.errors import WeightsError, WeightsFileError, tree_differences
from resnext_jax.weights.folders import read_folder
from resnext_jax.weights.hub import is_hub_id, resolve_hub
from resnext_jax.weights.pretrained import Pretrained
from resnext_jax.weights.torch_files import (
    SAFETENSORS,
    TORCH_PICKLES,
    read_state_dict,
)
from resnext_jax.weights.torch_names import (
    LoadReport,
    detect_layout,
    flax_shapes,
    matching_models,
    strip_prefix,
    torch_to_flax,
)
from resnext_jax.zoo import PretrainedCfg


@dataclasses.dataclass(frozen=True)
class _Source:
    """What a source is, decided before anything is read: the local file or folder, the
    architecture asked for or named by the source, and the published weight set when the
    source named one (only then does the result carry its name and accuracy)."""

    path: str
    model: str | ResNet | None
    cfg: PretrainedCfg | None = None


def load(source: str | os.PathLike, model: str | ResNet | None = None, *,
         rng: jax.Array | None = None, cache_dir: str | os.PathLike | None = None,
         **overrides: Any) -> Pretrained:
    """Load ``source`` (see the module docstring) into a model.

    ``model``: a zoo name or a ``ResNet``, for checkpoints that do not say which model they
    hold; it must agree with sources that do. ``overrides``: ``ResNet`` fields, e.g.
    ``dtype`` (``"auto"``: :func:`resnext_jax.ops.fastest_dtype` for the platform compiled
    for); ``num_classes`` other than the source's keeps the backbone and initialises a new
    head from ``rng`` (with a warning), ``num_classes=0`` drops the head.
    """
    zoo.check_options(os.fspath(source), overrides)
    changed = sorted(set(overrides) & set(native.ARCH_FIELDS) - {"num_classes"})
    if changed:
        raise WeightsError(f"load cannot change architecture fields {changed}: the weights "
                           "fix them; build a new model with create_model to change them")
    if isinstance(model, ResNet):  # its head is the one asked for
        overrides = {"num_classes": model.num_classes, **overrides}
    found = _resolve(os.fspath(source), model, cache_dir)
    if os.path.isdir(found.path):
        return _load_native(*read_folder(found.path), found, overrides, rng)
    if found.path.endswith(native.SUFFIX):
        return _load_native(found.path, *native.read(found.path), found, overrides, rng)
    return _load_torch(found.path, read_state_dict(found.path), found, overrides, rng)


def _resolve(path: str, model: str | ResNet | None, cache_dir: str | os.PathLike | None
             ) -> _Source:
    if os.path.exists(path):
        return _Source(path, model)
    cfg = _weight_set(path, model)
    if cfg is not None:
        if cfg.hf_hub_id is None:
            raise WeightsFileError(f"weight set {cfg.name!r} has no Hugging Face Hub copy: "
                                   f"download {cfg.url} and load the file")
        return _Source(resolve_hub(cfg.hf_hub_id, cache_dir), cfg.model, cfg)
    if path.endswith(SAFETENSORS + TORCH_PICKLES + (native.SUFFIX,)) or _looks_local(path):
        raise WeightsFileError(f"no such file or folder: {path}")
    if is_hub_id(path):
        return _Source(resolve_hub(path, cache_dir), model)
    raise WeightsFileError(f"{path!r} is neither a file or folder, a model or weight-set name "
                           "(resnext_jax.list_pretrained()) nor a Hub id such as "
                           "'timm/seresnext50_32x4d.racm_in1k'")


def _weight_set(source: str, model: str | ResNet | None) -> PretrainedCfg | None:
    """The weight set a source names: a set, a model's default set, or a Hub id named
    after a set (``timm/seresnext50_32x4d.racm_in1k``)."""
    candidate = source.removeprefix("hf-hub:").split("/")[-1]
    if source in zoo.list_models() and source not in zoo.list_pretrained():
        try:
            cfg = zoo.get_pretrained_cfg(source)
        except UsageError:
            raise WeightsFileError(f"the zoo knows no weights for {source!r}; known sets: "
                                   f"{', '.join(zoo.list_pretrained())}") from None
    elif candidate in zoo.list_pretrained() and (candidate == source or is_hub_id(source)):
        cfg = zoo.get_pretrained_cfg(candidate)
    else:
        return None
    if isinstance(model, str) and model != cfg.model:
        raise WeightsError(f"weight set {cfg.name!r} is for model {cfg.model!r}, not {model!r}")
    return cfg


def _looks_local(path: str) -> bool:
    """``runs/best`` whose ``runs`` exists here is a mistyped path, not a Hub repo."""
    first = path.split("/")[0]
    return path.startswith((".", "/", "~")) or (first != path and os.path.isdir(first))


def _new_head(model: ResNet, rng: jax.Array | None) -> dict[str, Any]:
    """Fresh classifier parameters, initialised as the model's own ``fc``."""
    dense = nn.Dense(model.num_classes, param_dtype=model.param_dtype)
    key = jax.random.key(0) if rng is None else rng
    return dict(dense.init(key, jnp.zeros((1, model.num_features), model.param_dtype))["params"])


def _head_plan(file_classes: int | None, overrides: dict[str, Any], source: str) -> tuple[
        int, bool]:
    """``(num_classes to build, whether to make a new head)``."""
    wanted = overrides.get("num_classes", file_classes or 0)
    if wanted in (0, file_classes):
        return wanted, False
    found = f"a {file_classes}-class head" if file_classes else "no classifier head"
    warnings.warn(f"{source} has {found}: the backbone is loaded and a new classifier head "
                  f"for {wanted} classes is initialised", stacklevel=3)
    return wanted, True


def _finish(model: ResNet, variables: dict[str, Any], cfg: PretrainedCfg, report: LoadReport,
            fresh_head: bool, rng: jax.Array | None) -> Pretrained:
    if fresh_head:
        variables["params"]["fc"] = _new_head(model, rng)
        report.notes.append(f"classifier: new head for {model.num_classes} classes")
    elif model.num_classes == 0:
        variables["params"].pop("fc", None)
    return Pretrained(model, variables, cfg, report)


def _load_native(path: str, meta: dict[str, Any], saved: dict[str, Any], found: _Source,
                 overrides: dict[str, Any], rng: jax.Array | None) -> Pretrained:
    file_name, wanted = meta.get("model_name"), found.model
    if isinstance(wanted, str) and file_name not in (None, wanted):
        raise WeightsError(f"{path} holds {file_name!r} weights, not {wanted!r}")
    params = saved.get("params", {}) if isinstance(saved, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("fc", {}), dict):
        raise WeightsFileError(f"{path}: its variables are not a tree of arrays (damaged?)")
    classes = np.shape(params["fc"].get("kernel"))[-1] if "fc" in params else None
    num_classes, fresh = _head_plan(classes, overrides, path)
    model = native.model_from_meta(meta, **{**overrides, "num_classes": num_classes})
    if wanted is not None:  # as strict as create_model: the file must be that architecture
        reference = zoo.create_model(wanted) if isinstance(wanted, str) else wanted
        native.check_architecture(meta, reference.clone(num_classes=classes or 0), path)
    expected = unflatten_dict(flax_shapes(model.clone(num_classes=classes or 0)))
    problems = tree_differences(expected, saved)
    if problems:
        raise WeightsError(f"{path} does not fit its own architecture (damaged?): "
                           + "; ".join(problems))
    variables = jax.tree_util.tree_map(jnp.asarray, saved)
    cfg = native.cfg_from_meta(meta)
    if cfg is None or zoo.is_published(cfg):
        # A file's claim to be a published set cannot be checked: only loading the set by
        # its name or Hub id attaches its name and accuracy. The transform it records is the
        # one in use.
        cfg = zoo.unpublished_cfg(file_name or os.path.basename(path), path, num_classes,
                                  cfg.transform if cfg else None)
    report = LoadReport(path, f"resnext_jax ({file_name or 'unnamed'})",
                        loaded=len(jax.tree_util.tree_leaves(saved)))
    return _finish(model, variables, cfg, report, fresh, rng)


def _load_torch(path: str, tensors: dict[str, np.ndarray], found: _Source,
                overrides: dict[str, Any], rng: jax.Array | None) -> Pretrained:
    wanted = found.model or _guess_model(path, tensors)  # the tensors decide when none did
    prefix = strip_prefix(tensors)
    classes = next((int(tensors[prefix + k].shape[0]) for k in ("fc.weight",
                    "last_linear.weight") if prefix + k in tensors), None)
    num_classes, fresh = _head_plan(classes, overrides, path)
    kwargs = {**overrides, "num_classes": num_classes}
    model = (zoo.create_model(wanted, **kwargs) if isinstance(wanted, str)
             else wanted.clone(**kwargs))
    name = wanted if isinstance(wanted, str) else None
    variables, report = torch_to_flax(tensors, model, skip_head=fresh or num_classes == 0,
                                      source=path, model_name=name)
    # The published set's config only when the source was that set (by name or Hub id).
    cfg = found.cfg or zoo.unpublished_cfg(name or os.path.basename(path), path, num_classes)
    return _finish(model, variables, cfg, report, fresh, rng)


def _guess_model(path: str, tensors: Mapping[str, np.ndarray]) -> str:
    prefix = strip_prefix(tensors)
    stripped = {k[len(prefix):]: v for k, v in tensors.items()}
    found = matching_models(stripped, detect_layout(stripped))
    if len(found) == 1:
        return found[0]
    if found:
        raise WeightsError(f"{path} fits several zoo models ({', '.join(found)}): pass "
                           "model=NAME")
    raise WeightsError(f"no zoo model fits {path}: pass model=NAME "
                       "(resnext_jax.list_models()) or model=ResNet(...)")
