"""PyTorch parameter names of our Flax variables, per source layout, and layout detection.

Three layouts name the same tensors: ``torchvision`` (``conv1``, ``layer1.0.conv2``,
``downsample.0/1``, ``fc``), ``timm`` (torchvision's names plus the deep stem ``conv1.0..6``,
the average-pool shortcut ``downsample.1/2`` and SE ``se.fc1/fc2``) and ``legacy`` (Cadene's
pretrainedmodels and timm's ``legacy_*``: ``layer0.*``, ``se_module.*``, ``last_linear``).
torchvision's names are a subset of timm's, so one rule set serves both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from resnext_jax.model import ResNet
from resnext_jax.weights.errors import WeightsError

LAYOUTS = ("torchvision", "timm", "legacy")

# timm's deep stem is ``conv1 = Sequential(conv, bn, act, conv, bn, act, conv)`` then ``bn1``.
_DEEP_STEM = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4",
              "conv3": "conv1.6", "bn3": "bn1"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_BLOCK = re.compile(r"layer(\d+)_(\d+)$")


def layout_family(layout: str) -> str:
    """``"legacy"`` or ``"resnet"`` (torchvision and timm share their names)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; choose one of {LAYOUTS}")
    return "legacy" if layout == "legacy" else "resnet"


def model_layout(model: ResNet) -> str:
    """The layout a model's parameters are published in (its default for export)."""
    if model.stem.startswith("legacy"):
        return "legacy"
    plain = model.stem == "7x7" and model.downsample == "conv" and model.se is None
    return "torchvision" if plain else "timm"


def torch_name(path: tuple[str, ...], model: ResNet, layout: str) -> str:
    """PyTorch state-dict key of the Flax leaf at ``path`` (collection first).

    Example: ``("params", "layer1_0", "se", "fc1", "kernel")`` -> ``"layer1.0.se.fc1.weight"``
    (timm) or ``"layer1.0.se_module.fc1.weight"`` (legacy).
    """
    legacy = layout_family(layout) == "legacy"
    _, top, *inner, leaf = path
    if top == "stem":
        (module,) = inner
        if legacy:
            names = ["layer0", module]
        elif model.stem in ("deep", "deep_tiered"):
            names = [_DEEP_STEM[module]]
        else:
            names = [module]
    elif top == "fc":
        names = ["last_linear" if legacy else "fc"]
    elif match := _BLOCK.match(top):
        names = [f"layer{match[1]}", match[2], *_block_names(inner, model, legacy)]
    else:
        raise KeyError(f"no PyTorch name for Flax variable {'/'.join(path)}")
    return ".".join([*names, _LEAF[leaf]])


def _block_names(inner: list[str], model: ResNet, legacy: bool) -> list[str]:
    if inner[0] == "se":
        return ["se_module" if legacy else "se", *inner[1:]]
    if inner[0] == "downsample":
        # timm's avg-pool shortcut is Sequential(pool or Identity, conv, bn).
        offset = 1 if model.downsample == "avg" else 0
        return ["downsample", str({"conv": 0, "bn": 1}[inner[1]] + offset)]
    return inner


def strip_prefix(keys: Iterable[str]) -> str:
    """The wrapper prefix shared by every key (``module.`` from DataParallel, ``model.``)."""
    keys = list(keys)
    for prefix in ("module.", "model.", "backbone."):
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix + strip_prefix(k[len(prefix):] for k in keys)
    return ""


def detect_layout(keys: Iterable[str]) -> str:
    """``"legacy"``, ``"timm"`` or ``"torchvision"`` from a state dict's (prefix-free) keys."""
    keys = set(keys)
    if any(k.startswith(("layer0.", "last_linear.")) or ".se_module." in k for k in keys):
        return "legacy"
    if any(k.startswith("conv1.0.") or ".se.fc1." in k or ".downsample.2." in k for k in keys):
        return "timm"
    if "conv1.weight" in keys or any(k.startswith("layer1.0.") for k in keys):
        return "torchvision"
    sample = ", ".join(sorted(keys)[:5]) or "(no keys)"
    raise WeightsError("cannot tell the weight layout: expected torchvision / timm keys such as "
                     "'conv1.weight' and 'layer1.0.conv1.weight', or legacy SENet keys such as "
                     f"'layer0.conv1.weight'; the file has {len(keys)} keys, e.g. {sample}")
