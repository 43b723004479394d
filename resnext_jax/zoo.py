"""The model zoo: named architectures as data, ``create_model`` and ``list_models``."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

from resnext_jax.model import ResNet


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A named architecture: ``ResNet`` arguments plus where the layout comes from."""

    name: str
    kwargs: dict[str, Any]
    source: str  # whose layout (and parameter names) the model reproduces


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, source: str, **kwargs: Any) -> None:
    """Add a named architecture; ``kwargs`` are :class:`~resnext_jax.model.ResNet` fields."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _check_fields(name, kwargs)
    _REGISTRY[name] = ModelEntry(name, dict(kwargs), source)


def _check_fields(name: str, kwargs: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        hints = {k: difflib.get_close_matches(k, fields, 1) for k in unknown}
        raise TypeError(f"{name}: unknown option(s) " + ", ".join(
            f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            + f"; ResNet accepts {sorted(fields)}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"seresnext*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names get close matches suggested."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see resnext_jax.list_models())")
    return _REGISTRY[name]


def create_model(name: str, pretrained: Any = None,
                 **overrides: Any) -> ResNet | tuple[ResNet, dict[str, Any]]:
    """Build a registered model; ``overrides`` replace its ``ResNet`` fields.

    Example: ``create_model("seresnext50_32x4d", num_classes=10, dtype=jnp.bfloat16)``.

    With ``pretrained`` (``True`` for the model's default weight set, a set name such as
    ``"seresnext50_32x4d.racm_in1k"``, a Hub id, or a .safetensors / .pth / .msgpack file)
    it returns ``(model, variables)``. Passing ``num_classes`` that differs from the
    checkpoint's keeps the backbone and re-initialises only the head (with a warning);
    see :func:`resnext_jax.weights.load_pretrained`.
    """
    entry = get_entry(name)
    _check_fields(name, overrides)
    model = ResNet(**{**entry.kwargs, **overrides})
    if pretrained is None or pretrained is False:
        return model
    from resnext_jax.weights import load_pretrained  # lazy: file and Hub I/O only when asked

    variables, _ = load_pretrained(model, pretrained, model_name=name,
                                   reset_head="num_classes" in overrides)
    return model, variables


TV_TIMM = "torchvision / timm"
TIMM = "timm"
LEGACY = "legacy SENet (Cadene pretrainedmodels / timm legacy_*)"
CIFAR = "ResNeXt paper, CIFAR (Xie et al. 2017)"
TINY = "small variant for tests"

_RESNEXT_D = dict(stem="deep", stem_width=32, downsample="avg")

register("resnet18", TV_TIMM, layers=(2, 2, 2, 2), block="basic")
register("resnet34", TV_TIMM, layers=(3, 4, 6, 3), block="basic")
register("resnet50", TV_TIMM, layers=(3, 4, 6, 3))
register("resnet101", TV_TIMM, layers=(3, 4, 23, 3))
register("resnet152", TV_TIMM, layers=(3, 8, 36, 3))
register("seresnet50", TIMM, layers=(3, 4, 6, 3), se="timm")

register("resnext50_32x4d", TV_TIMM, layers=(3, 4, 6, 3), cardinality=32, base_width=4)
register("resnext50d_32x4d", TIMM, layers=(3, 4, 6, 3), cardinality=32, base_width=4,
         **_RESNEXT_D)
register("resnext101_32x4d", TIMM, layers=(3, 4, 23, 3), cardinality=32, base_width=4)
register("resnext101_32x8d", TV_TIMM, layers=(3, 4, 23, 3), cardinality=32, base_width=8)
register("resnext101_32x16d", TIMM, layers=(3, 4, 23, 3), cardinality=32, base_width=16)
register("resnext101_64x4d", TV_TIMM, layers=(3, 4, 23, 3), cardinality=64, base_width=4)
register("resnext152_32x4d", "ResNeXt paper (timm-style layout)", layers=(3, 8, 36, 3),
         cardinality=32, base_width=4)

register("seresnext26d_32x4d", TIMM, layers=(2, 2, 2, 2), cardinality=32, base_width=4,
         se="timm", **_RESNEXT_D)
register("seresnext26t_32x4d", TIMM, layers=(2, 2, 2, 2), cardinality=32, base_width=4,
         se="timm", **{**_RESNEXT_D, "stem": "deep_tiered"})
register("seresnext50_32x4d", TIMM, layers=(3, 4, 6, 3), cardinality=32, base_width=4,
         se="timm")
register("seresnext101_32x4d", TIMM, layers=(3, 4, 23, 3), cardinality=32, base_width=4,
         se="timm")
register("seresnext101_32x8d", TIMM, layers=(3, 4, 23, 3), cardinality=32, base_width=8,
         se="timm")
register("seresnext101d_32x8d", TIMM, layers=(3, 4, 23, 3), cardinality=32, base_width=8,
         se="timm", **_RESNEXT_D)

_LEGACY_SERESNEXT = dict(cardinality=32, base_width=4, se="legacy", stem="legacy_7x7")
register("legacy_seresnext26_32x4d", LEGACY, layers=(2, 2, 2, 2), **_LEGACY_SERESNEXT)
register("legacy_seresnext50_32x4d", LEGACY, layers=(3, 4, 6, 3), **_LEGACY_SERESNEXT)
register("legacy_seresnext101_32x4d", LEGACY, layers=(3, 4, 23, 3), **_LEGACY_SERESNEXT)
register("legacy_senet154", LEGACY, layers=(3, 8, 36, 3), block="senet154", cardinality=64,
         se="legacy", stem="legacy_deep", stem_width=64, stem_features=128,
         downsample="conv3x3", drop_rate=0.2)

_CIFAR = dict(layers=(3, 3, 3), stage_planes=(64, 128, 256), stem="cifar", base_width=64,
              num_classes=10)
register("resnext29_8x64d", CIFAR, cardinality=8, **_CIFAR)
register("resnext29_16x64d", CIFAR, cardinality=16, **_CIFAR)

# Small but complete variants (every layer type, a few blocks) for fast tests and demos.
_TINY = dict(layers=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128), stem_features=16,
             cardinality=4, base_width=16, num_classes=10)
register("tiny_resnet", TINY, **{**_TINY, "cardinality": 1, "base_width": 64})
register("tiny_resnext", TINY, **_TINY)
register("tiny_seresnext", TINY, se="timm", **_TINY)
register("tiny_seresnext_d", TINY, se="timm", **_TINY, **{**_RESNEXT_D, "stem_width": 16})
register("tiny_legacy_seresnext", TINY, **{**_TINY, **_LEGACY_SERESNEXT})
register("tiny_legacy_senet", TINY, **{**_TINY, "block": "senet154", "se": "legacy",
                                       "stem": "legacy_deep", "stem_width": 16,
                                       "stem_features": 32, "downsample": "conv3x3"})
register("tiny_resnext_cifar", TINY, layers=(1, 1, 1), stage_planes=(16, 32, 64),
         stem="cifar", stem_features=16, cardinality=4, base_width=16, num_classes=10)
