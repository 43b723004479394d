"""Known ImageNet weight sets: where they live and how their inputs were preprocessed.

Like timm's pretrained configs: each set names the zoo model it fits, its Hub id, the
evaluation transform (resize the shorter side to ``input_size / crop_pct`` with
``interpolation``, center-crop ``input_size``, normalise with ``mean`` / ``std``) and the
published ImageNet-1k top-1 at that transform (torchvision's weight metadata, timm's
results tables; ``None`` where the project has no published figure on record).
torchvision sets use torchvision's own eval transform (resize 256 or 232, crop 224), which
produced their published accuracy.
"""

from __future__ import annotations

import dataclasses
import fnmatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """One weight set, named ``model.tag`` as timm names them."""

    name: str
    hf_hub_id: str | None
    top1: float | None
    crop_pct: float
    interpolation: str
    input_size: tuple[int, int, int] = (224, 224, 3)  # HWC, as our models take images
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    url: str | None = None  # original release, for sets without a Hub copy
    origin: str = "timm"

    @property
    def model(self) -> str:
        return self.name.split(".")[0]


_TV = dict(interpolation="bilinear", origin="torchvision")
_TV1 = dict(_TV, crop_pct=224 / 256)
_TV2 = dict(_TV, crop_pct=224 / 232)
_TIMM_BICUBIC = dict(interpolation="bicubic", crop_pct=0.875)
_GH = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"

_CFGS = [
    # Default set of a model first.
    PretrainedCfg("resnext50_32x4d.tv2_in1k", "timm/resnext50_32x4d.tv2_in1k", 81.198, **_TV2),
    PretrainedCfg("resnext50_32x4d.tv_in1k", "timm/resnext50_32x4d.tv_in1k", 77.618, **_TV1),
    PretrainedCfg("resnext101_32x8d.tv2_in1k", "timm/resnext101_32x8d.tv2_in1k", 82.834, **_TV2),
    PretrainedCfg("resnext101_32x8d.tv_in1k", "timm/resnext101_32x8d.tv_in1k", 79.312, **_TV1),
    PretrainedCfg("resnext101_64x4d.tv_in1k", "timm/resnext101_64x4d.tv_in1k", 83.246, **_TV2),
    PretrainedCfg("seresnext50_32x4d.racm_in1k", "timm/seresnext50_32x4d.racm_in1k", 81.268,
                  **_TIMM_BICUBIC),
    PretrainedCfg("legacy_seresnext50_32x4d.in1k", None, 79.080, crop_pct=0.875,
                  interpolation="bilinear", url=_GH + "legacy_se_resnext50_32x4d-f3651bad.pth",
                  origin="Cadene pretrainedmodels via timm"),
    PretrainedCfg("resnext50d_32x4d.bt_in1k", "timm/resnext50d_32x4d.bt_in1k", None,
                  **_TIMM_BICUBIC),
    PretrainedCfg("seresnext26d_32x4d.bt_in1k", "timm/seresnext26d_32x4d.bt_in1k", None,
                  **_TIMM_BICUBIC),
    PretrainedCfg("seresnext26t_32x4d.bt_in1k", "timm/seresnext26t_32x4d.bt_in1k", None,
                  **_TIMM_BICUBIC),
    PretrainedCfg("seresnext101_32x8d.ah_in1k", "timm/seresnext101_32x8d.ah_in1k", None,
                  crop_pct=0.95, interpolation="bicubic"),
    PretrainedCfg("seresnext101d_32x8d.ah_in1k", "timm/seresnext101d_32x8d.ah_in1k", None,
                  crop_pct=0.95, interpolation="bicubic"),
    PretrainedCfg("legacy_seresnext101_32x4d.in1k", None, None, crop_pct=0.875,
                  interpolation="bilinear", url=_GH + "legacy_se_resnext101_32x4d-37725eac.pth",
                  origin="Cadene pretrainedmodels via timm"),
    PretrainedCfg("legacy_senet154.in1k", None, None, crop_pct=0.875, interpolation="bilinear",
                  url=_GH + "legacy_senet154-e9eb9fe6.pth",
                  origin="Cadene pretrainedmodels via timm"),
]
PRETRAINED: dict[str, PretrainedCfg] = {cfg.name: cfg for cfg in _CFGS}


def list_pretrained(pattern: str = "*") -> list[str]:
    """Known weight sets matching a shell-style pattern, e.g. ``"seresnext*"``."""
    return [name for name in PRETRAINED if fnmatch.fnmatch(name, pattern)]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config of a weight set ``model.tag``, or of a model's default set."""
    if name in PRETRAINED:
        return PRETRAINED[name]
    for cfg in _CFGS:
        if cfg.model == name:
            return cfg
    raise KeyError(f"no known weight set {name!r}; known sets: {', '.join(PRETRAINED)}")
