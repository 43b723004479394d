"""The model zoo: named architectures and their known weight sets, as data.

``create_model(name, **overrides)`` builds a model; ``get_pretrained_cfg(name)`` gives its
default weight set's config; ``resnext_jax.load`` loads weights (a ``Pretrained`` carries the
config of the weights it holds).

A weight set, like timm's pretrained configs, names the model it fits, its Hugging Face Hub
copy, the published ImageNet-1k top-1 (torchvision's weight metadata, timm's results tables;
None where the project has no figure on record) and the transform it was evaluated with.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

from resnext_jax.errors import UsageError
from resnext_jax.model import ResNet
from resnext_jax.transforms import Transform


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
    check_options(name, kwargs)
    _REGISTRY[name] = ModelEntry(name, dict(kwargs), source)


# Options timm users may pass that are not model fields here, and what to do instead.
_NOT_FIELDS = {
    "pretrained": "create_model builds the module only; for weights use "
                  "resnext_jax.load({name!r}) (or a weight-set name, Hub id or file), which "
                  "returns Pretrained(model, variables, cfg, report)",
    "features_only": "features_only is not a model option: the feature maps come from "
                     "model.apply(variables, x, method=model.forward_intermediates), and "
                     "num_classes=0 builds the model without a classifier",
    "train_from": "train_from is given when the model is applied: "
                  "model.apply(variables, x, train=True, train_from='layer4')",
}


def check_options(name: str, kwargs: dict[str, Any]) -> None:
    """``kwargs`` are ``ResNet`` fields (a TypeError naming the close ones otherwise)."""
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    for key, answer in _NOT_FIELDS.items():
        if key in kwargs:
            raise TypeError(answer.format(name=name))
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
        raise UsageError(f"unknown model {name!r}{hint} (see resnext_jax.list_models())")
    return _REGISTRY[name]


def create_model(name: str, **overrides: Any) -> ResNet:
    """Build a registered model; ``overrides`` replace its ``ResNet`` fields.

    Example: ``create_model("seresnext50_32x4d", num_classes=10, dtype=jnp.bfloat16)``;
    ``dtype="auto"`` computes in the fastest dtype for the platform the model is compiled
    for (:func:`resnext_jax.ops.fastest_dtype`: float32 on the CPU, bfloat16 on GPU / TPU).
    ``resnext_jax.load(name)`` loads the default weight set's weights into it.
    """
    entry = get_entry(name)
    check_options(name, overrides)
    return ResNet(**{**entry.kwargs, **overrides})


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """One weight set, named ``model.tag`` as timm names them."""

    name: str
    hf_hub_id: str | None
    top1: float | None
    transform: Transform = Transform()
    num_classes: int = 1000
    url: str | None = None  # the original release, for sets without a Hub copy
    origin: str = "timm"

    @property
    def model(self) -> str:
        return self.name.split(".")[0]


def unpublished_cfg(model_name: str, origin: str, num_classes: int,
                    transform: Transform | None = None) -> PretrainedCfg:
    """The config of weights that are no published set (a file, a fine-tuned or fresh model):
    the architecture's name, the transform in use and where they came from; no published
    name, accuracy or Hub id."""
    return PretrainedCfg(model_name, None, None, transform or Transform(), num_classes,
                         origin=origin)


def is_published(cfg: PretrainedCfg) -> bool:
    """Whether ``cfg`` names a registered (published) weight set."""
    return cfg.name in _SETS


def register_pretrained(cfg: PretrainedCfg) -> None:
    """Add a weight set; a model's first set is its default."""
    get_entry(cfg.model)
    if cfg.name in _SETS:
        raise ValueError(f"weight set {cfg.name!r} is already registered")
    _SETS[cfg.name] = cfg


def list_pretrained(pattern: str = "*") -> list[str]:
    """Known weight sets matching a shell-style pattern, e.g. ``"seresnext*"``."""
    return sorted(name for name in _SETS if fnmatch.fnmatch(name, pattern))


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config of a weight set ``model.tag``, or of a model's default set."""
    if name in _SETS:
        return _SETS[name]
    for cfg in _SETS.values():
        if cfg.model == name:
            return cfg
    close = difflib.get_close_matches(name, list(_SETS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UsageError(f"no known weight set {name!r}{hint} (see "
                     "resnext_jax.list_pretrained())")


TV_TIMM = "torchvision / timm"
TIMM = "timm"
LEGACY = "legacy SENet (Cadene pretrainedmodels / timm legacy_*)"
CIFAR = "ResNeXt paper, CIFAR (Xie et al. 2017)"
TINY = "small variant for tests"
DIGITS = "small model for 8x8 grey digits (the README's main job)"

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
# The README's main job: small (SE-)ResNeXts for 8x8 grey digits.
_DIGITS = dict(layers=(1, 1, 1), stage_planes=(16, 32, 64), stem="cifar", stem_features=16,
               cardinality=8, base_width=16, in_chans=1, num_classes=10)
register("digits_seresnext", DIGITS, se="timm", **_DIGITS)
register("digits_resnext", DIGITS, **_DIGITS)
register("tiny_resnext_cifar", TINY, layers=(1, 1, 1), stage_planes=(16, 32, 64),
         stem="cifar", stem_features=16, cardinality=4, base_width=16, num_classes=10)


# Weight sets; a model's first is its default. torchvision's use torchvision's own eval
# transform (resize 256 or 232, crop 224), which produced their published accuracy.
_SETS: dict[str, PretrainedCfg] = {}
_TV1 = dict(transform=Transform(crop_pct=224 / 256), origin="torchvision")
_TV2 = dict(transform=Transform(crop_pct=224 / 232), origin="torchvision")
_BICUBIC = dict(transform=Transform(interpolation="bicubic"))
_BICUBIC_95 = dict(transform=Transform(crop_pct=0.95, interpolation="bicubic"))
_CADENE = dict(origin="Cadene pretrainedmodels via timm")
_GH = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
for _cfg in [
    PretrainedCfg("resnext50_32x4d.tv2_in1k", "timm/resnext50_32x4d.tv2_in1k", 81.198, **_TV2),
    PretrainedCfg("resnext50_32x4d.tv_in1k", "timm/resnext50_32x4d.tv_in1k", 77.618, **_TV1),
    PretrainedCfg("resnext101_32x8d.tv2_in1k", "timm/resnext101_32x8d.tv2_in1k", 82.834, **_TV2),
    PretrainedCfg("resnext101_32x8d.tv_in1k", "timm/resnext101_32x8d.tv_in1k", 79.312, **_TV1),
    PretrainedCfg("resnext101_64x4d.tv_in1k", "timm/resnext101_64x4d.tv_in1k", 83.246, **_TV2),
    PretrainedCfg("seresnext50_32x4d.racm_in1k", "timm/seresnext50_32x4d.racm_in1k", 81.268,
                  **_BICUBIC),
    PretrainedCfg("legacy_seresnext50_32x4d.in1k", None, 79.080,
                  url=_GH + "legacy_se_resnext50_32x4d-f3651bad.pth", **_CADENE),
    PretrainedCfg("resnext50d_32x4d.bt_in1k", "timm/resnext50d_32x4d.bt_in1k", None, **_BICUBIC),
    PretrainedCfg("seresnext26d_32x4d.bt_in1k", "timm/seresnext26d_32x4d.bt_in1k", None,
                  **_BICUBIC),
    PretrainedCfg("seresnext26t_32x4d.bt_in1k", "timm/seresnext26t_32x4d.bt_in1k", None,
                  **_BICUBIC),
    PretrainedCfg("seresnext101_32x8d.ah_in1k", "timm/seresnext101_32x8d.ah_in1k", None,
                  **_BICUBIC_95),
    PretrainedCfg("seresnext101d_32x8d.ah_in1k", "timm/seresnext101d_32x8d.ah_in1k", None,
                  **_BICUBIC_95),
    PretrainedCfg("legacy_seresnext101_32x4d.in1k", None, None,
                  url=_GH + "legacy_se_resnext101_32x4d-37725eac.pth", **_CADENE),
    PretrainedCfg("legacy_senet154.in1k", None, None, url=_GH + "legacy_senet154-e9eb9fe6.pth",
                  **_CADENE),
]:
    register_pretrained(_cfg)
