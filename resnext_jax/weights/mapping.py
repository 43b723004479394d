"""PyTorch state dict <-> Flax variables (``params`` and ``batch_stats``) for one model.

The model's own variable tree (from ``jax.eval_shape``, no compute) drives the mapping: every
Flax leaf has one PyTorch name (:mod:`resnext_jax.weights.layouts`) and one layout change:
conv kernels ``(out, in/groups, kh, kw)`` <-> ``(kh, kw, in/groups, out)``, linear and SE 1x1
conv weights <-> Dense kernels ``(in, out)``, BN running stats <-> ``batch_stats``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from resnext_jax.model import ResNet
from resnext_jax.weights.errors import WeightsError
from resnext_jax.weights.layouts import detect_layout, model_layout, strip_prefix, torch_name

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

    def summary(self) -> str:
        lines = [f"source: {self.source}", f"layout: {self.layout}",
                 f"tensors loaded: {self.loaded}",
                 f"dropped: {len(self.dropped)} BN num_batches_tracked counters"]
        return "\n".join(lines + self.notes + ([self.problems()] if not self.ok else []))


def _natural(name: str) -> list:
    """Sort key that puts ``layer3.2`` before ``layer3.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _first(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f", ... (+{more} more)" if more > 0 else "")


def torch_to_flax(state_dict: Mapping[str, np.ndarray], model: ResNet, *,
                  layout: str = "auto", strict: bool = True, skip_head: bool = False,
                  base: Mapping[str, Any] | None = None, source: str = "state dict",
                  model_name: str | None = None) -> tuple[dict[str, Any], LoadReport]:
    """Flax variables of ``model`` from a PyTorch ``state_dict`` (numpy arrays).

    ``layout="auto"`` detects torchvision / timm / legacy from the keys. With ``strict``,
    any missing, unexpected or shape-mismatched key raises :class:`WeightsError` naming
    them all and nothing is returned; otherwise those leaves keep their value in ``base``
    (required then). ``skip_head`` leaves the classifier out (the caller supplies one).
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
        if strict:
            raise WeightsError(_mismatch_message(report, model_name, tensors))
        if base is None:
            raise ValueError("strict=False needs base variables to keep for the leaves the "
                             "file does not provide (e.g. model.init(...))")
        flat = {**flatten_dict(dict(base)), **flat}
    return jax.tree_util.tree_map(jnp.asarray, unflatten_dict(flat)), report


def _mismatch_message(report: LoadReport, model_name: str | None,
                      tensors: Mapping[str, np.ndarray]) -> str:
    from resnext_jax.weights.guess import matching_models

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
    expected = flax_shapes(model)
    flat = flatten_dict({k: v for k, v in dict(variables).items()
                         if k in ("params", "batch_stats")})
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    wrong = sorted(f"{'/'.join(p)} {tuple(np.shape(flat[p]))} vs {tuple(s.shape)}"
                   for p, s in expected.items() if p in flat and np.shape(flat[p]) != s.shape)
    if missing or extra or wrong:
        raise WeightsError("variables do not fit the model: missing "
                           f"{_first(['/'.join(p) for p in missing]) or 'none'}; extra "
                           f"{_first(['/'.join(p) for p in extra]) or 'none'}; wrong shapes "
                           f"{_first(wrong) or 'none'}")
    out = {}
    for path, value in flat.items():
        array = np.asarray(value)
        name = torch_name(path, model, layout)
        out[name] = _to_torch(array, _kind(path, array.ndim))
        if with_counters and path[-1] == "mean":
            out[name.replace("running_mean", "num_batches_tracked")] = np.array(0, np.int64)
    return out
