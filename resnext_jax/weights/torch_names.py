"""PyTorch state dict <-> Flax variables: parameter names per source layout, and shapes.

Three layouts name the same tensors: ``torchvision`` (``conv1``, ``layer1.0.conv2``,
``downsample.0/1``, ``fc``), ``timm`` (torchvision's names plus the deep stem ``conv1.0..6``,
the average-pool shortcut ``downsample.1/2`` and SE ``se.fc1/fc2``) and ``legacy`` (Cadene's
pretrainedmodels and timm's ``legacy_*``: ``layer0.*``, ``se_module.*``, ``last_linear``).
torchvision's names are a subset of timm's, so one rule set serves both.

The model's own variable tree (from ``jax.eval_shape``, no compute) drives the mapping: every
Flax leaf has one PyTorch name and one layout change: conv kernels ``(out, in/groups, kh, kw)``
<-> ``(kh, kw, in/groups, out)``, linear and SE 1x1 conv weights <-> Dense kernels
``(in, out)``, BN running stats <-> ``batch_stats``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from resnext_jax import zoo
from resnext_jax.model import ResNet
from resnext_jax.weights.errors import WeightsError, tree_differences

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


Path = tuple[str, ...]
DROPPED_SUFFIXES = ("num_batches_tracked",)  # BN step counters: flax has no equivalent
_SHOWN = 8  # names listed per problem kind in error messages


def flax_shapes(model: ResNet) -> dict[Path, jax.ShapeDtypeStruct]:
    """Shape and dtype of every variable of ``model``, keyed by path (collection first)."""
    size = model.feature_info[-1]["reduction"]
    x = jax.ShapeDtypeStruct((1, size, size, model.in_chans), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return flatten_dict(dict(tree))


def _kind(path: Path, ndim: int) -> str:
    if path[-1] != "kernel":
        return "same"
    if ndim == 4:
        return "conv"
    return "conv1x1" if "se" in path else "linear"


def torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The PyTorch shape of a Flax leaf of ``shape``."""
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "conv1x1":
        return (shape[1], shape[0], 1, 1)
    if kind == "linear":
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if kind == "conv1x1":
        return array[:, :, 0, 0].T
    if kind == "linear":
        return array.T
    return array


def _to_torch(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return array.transpose(3, 2, 0, 1)
    if kind == "conv1x1":
        return array.T[:, :, None, None]
    if kind == "linear":
        return array.T
    return array


@dataclasses.dataclass
class LoadReport:
    """What a conversion did: counts, and every problem by PyTorch name."""

    source: str
    layout: str
    loaded: int = 0
    dropped: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
        default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """Every missing, unexpected and shape-mismatched key (the first few of each)."""
        lines = []
        for label, names in (("missing from the file", self.missing),
                             ("unexpected in the file", self.unexpected)):
            if names:
                lines.append(f"  {len(names)} {label}: {_first(names)}")
        if self.mismatched:
            shown = ", ".join(f"{k} (file {tuple(f)}, model {tuple(m)})"
                              for k, f, m in self.mismatched[:_SHOWN])
            more = len(self.mismatched) - _SHOWN
            lines.append(f"  {len(self.mismatched)} shape mismatches: {shown}"
                         + (f", ... (+{more} more)" if more > 0 else ""))
        return "\n".join(lines)


def _natural(name: str) -> list:
    """Sort key that puts ``layer3.2`` before ``layer3.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _first(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f", ... (+{more} more)" if more > 0 else "")


def torch_to_flax(state_dict: Mapping[str, np.ndarray], model: ResNet, *,
                  layout: str = "auto", skip_head: bool = False, source: str = "state dict",
                  model_name: str | None = None) -> tuple[dict[str, Any], LoadReport]:
    """Flax variables of ``model`` from a PyTorch ``state_dict`` (numpy arrays).

    ``layout="auto"`` detects torchvision / timm / legacy from the keys. Strict: any
    missing, unexpected or shape-mismatched key raises :class:`WeightsError` naming them
    all, and nothing is returned. ``skip_head`` leaves the classifier out (the caller
    supplies one).
    """
    prefix = strip_prefix(state_dict)
    tensors = {k[len(prefix):]: v for k, v in state_dict.items()}
    try:
        layout = detect_layout(tensors) if layout == "auto" else layout
    except WeightsError as err:
        raise WeightsError(f"{source}: {err}") from None
    report = LoadReport(source, layout)
    report.dropped = sorted(k for k in tensors if k.endswith(DROPPED_SUFFIXES))
    flat, used = {}, set(report.dropped)
    for path, spec in flax_shapes(model).items():
        name = torch_name(path, model, layout)
        if skip_head and path[1] == "fc":
            continue
        kind = _kind(path, len(spec.shape))
        if name not in tensors:
            report.missing.append(name)
            continue
        used.add(name)
        want = torch_shape(spec.shape, kind)
        if tuple(tensors[name].shape) != want:
            report.mismatched.append((name, tuple(tensors[name].shape), want))
            continue
        flat[path] = np.asarray(_to_flax(tensors[name], kind), dtype=spec.dtype)
    head = {"fc.weight", "fc.bias", "last_linear.weight", "last_linear.bias"}
    report.unexpected = sorted((k for k in tensors if k not in used
                                and not (skip_head and k in head)), key=_natural)
    report.missing.sort(key=_natural)
    report.mismatched.sort(key=lambda item: _natural(item[0]))
    report.loaded = len(flat)
    if not report.ok:
        raise WeightsError(_mismatch_message(report, model_name, tensors))
    return jax.tree_util.tree_map(jnp.asarray, unflatten_dict(flat)), report


def _mismatch_message(report: LoadReport, model_name: str | None,
                      tensors: Mapping[str, np.ndarray]) -> str:
    target = repr(model_name) if model_name else "the model"
    text = (f"cannot load {report.source} ({report.layout} layout) into {target}; nothing "
            f"was loaded:\n{report.problems()}")
    candidates = [n for n in matching_models(tensors, report.layout) if n != model_name]
    if candidates:
        text += f"\nthe file matches {', '.join(map(repr, candidates))}: use that model name"
    return text


def flax_to_torch(variables: Mapping[str, Any], model: ResNet, *, layout: str | None = None,
                  with_counters: bool = True) -> dict[str, np.ndarray]:
    """A PyTorch state dict (numpy arrays) of ``variables`` in ``layout`` (default: the
    model's own). ``with_counters`` adds BN ``num_batches_tracked`` (0), as torch writes it."""
    layout = layout or model_layout(model)
    wanted = {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats")}
    problems = tree_differences(unflatten_dict(flax_shapes(model)), wanted)
    if problems:
        raise WeightsError("variables do not fit the model: " + "; ".join(problems))
    flat = flatten_dict(wanted)
    out = {}
    for path, value in flat.items():
        array = np.asarray(value)
        name = torch_name(path, model, layout)
        out[name] = _to_torch(array, _kind(path, array.ndim))
        if with_counters and path[-1] == "mean":
            out[name.replace("running_mean", "num_batches_tracked")] = np.array(0, np.int64)
    return out


_BLOCK_KEY = re.compile(r"^layer([1-9])\.(\d+)\.")


def depths(keys: list[str]) -> tuple[int, ...]:
    """Blocks per stage, read from ``layerS.I.`` keys."""
    found: dict[int, int] = {}
    for key in keys:
        if match := _BLOCK_KEY.match(key):
            stage, index = int(match[1]), int(match[2])
            found[stage] = max(found.get(stage, 0), index + 1)
    return tuple(found[s] for s in sorted(found))


def matching_models(tensors: Mapping[str, np.ndarray], layout: str) -> list[str]:
    """Registered names whose every backbone tensor has the file's name and shape (the
    classifier may differ), e.g. ``["seresnext50_32x4d"]``."""
    family = layout_family(layout)
    stages = depths(list(tensors))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()
              if not k.endswith("num_batches_tracked")}
    found = []
    for name in zoo.list_models():
        kwargs = zoo.get_entry(name).kwargs
        if tuple(kwargs.get("layers", ())) != stages:
            continue
        model = zoo.create_model(name, num_classes=0)
        if layout_family(model_layout(model)) != family:
            continue
        wanted = {torch_name(p, model, layout): torch_shape(s.shape, _kind(p, len(s.shape)))
                  for p, s in flax_shapes(model).items()}
        backbone = {k: v for k, v in shapes.items() if not k.startswith(("fc.", "last_linear."))}
        if wanted == backbone:
            found.append(name)
    return found
