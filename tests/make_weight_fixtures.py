"""Build the golden weight fixtures in tests/fixtures/weights/ with the reference code.

Needs torch, torchvision and timm (not run in CI)::

    /work/torchenv/bin/python tests/make_weight_fixtures.py

For each source layout it builds a small but real configuration with the reference
implementation's own classes (torchvision's ``ResNet``, timm's ``ResNet`` and legacy
``SENet``) with one or two blocks per stage and stage widths 8/16/32/64 (16..128 for the
legacy SE-ResNeXt, whose width rule floors 8 * 4 / 64 to 0; 4..32 for SENet-154's wider
block), gives every
tensor random values (BN statistics included), and saves

- ``NAME.safetensors``: the state dict exactly as ``model.state_dict()`` returns it;
- ``NAME.outputs.safetensors``: a fixed input (2 x 3 x 33 x 37, odd sizes so that ceil-mode
  and partial pooling windows occur) and, in eval mode, the stem map (before the max-pool),
  the output of every stage, the pooled pre-logits and the logits (NCHW, float32);
- ``manifest.json``: per fixture the layout, the reference constructor and the matching
  ``resnext_jax.ResNet`` arguments, plus library versions.

torchvision and legacy SENet hard-code stage widths 64..512; their stages are rebuilt with
the classes' own ``_make_layer`` at the small widths to keep the files small.
tests/make_pth_fixtures.py then writes two of them as ``.pth`` files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import safetensors
import safetensors.torch
import timm
import torch
import torchvision
from timm.models import resnet as timm_resnet
from timm.models import senet as timm_senet
from torch import nn
from torchvision.models import resnet as tv_resnet

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "weights")
PLANES = (8, 16, 32, 64)
LEGACY_PLANES = (16, 32, 64, 128)
SENET_PLANES = (4, 8, 16, 32)  # SEBottleneck is 4x wider than planes, 3x3 projections
CLASSES = 10
INPUT_SHAPE = (2, 3, 33, 37)
_OURS = dict(stage_planes=list(PLANES), num_classes=CLASSES)


def torchvision_resnet(block: type, layers: list[int], **kwargs: int) -> nn.Module:
    model = tv_resnet.ResNet(block, layers, num_classes=CLASSES, **kwargs)
    model.inplanes = 64
    for stage, (planes, depth) in enumerate(zip(PLANES, layers, strict=True)):
        setattr(model, f"layer{stage + 1}",
                model._make_layer(block, planes, depth, stride=1 if stage == 0 else 2))
    model.fc = nn.Linear(PLANES[-1] * block.expansion, CLASSES)
    return model


def legacy_senet(block: type, layers: list[int], planes_per_stage: tuple[int, ...],
                 **kwargs: object) -> nn.Module:
    model = timm_senet.SENet(block, layers, reduction=16, num_classes=CLASSES, **kwargs)
    model.inplanes = kwargs.get("inplanes", 64)
    for stage, (planes, depth) in enumerate(zip(planes_per_stage, layers, strict=True)):
        first = stage == 0  # Cadene: layer1's projection is 1x1 even in SENet-154
        setattr(model, f"layer{stage + 1}", model._make_layer(
            block, planes, depth, groups=kwargs["groups"], reduction=16,
            stride=1 if first else 2,
            downsample_kernel_size=1 if first else kwargs.get("downsample_kernel_size", 1),
            downsample_padding=0 if first else kwargs.get("downsample_padding", 0)))
    model.last_linear = nn.Linear(planes_per_stage[-1] * block.expansion, CLASSES)
    return model


def timm_model(layers: list[int], **kwargs: object) -> nn.Module:
    return timm_resnet.ResNet(timm_resnet.Bottleneck, layers, channels=PLANES,
                              num_classes=CLASSES, **kwargs)


_SE = dict(block_args=dict(attn_layer="se"))
_SE_D = dict(avg_down=True, **_SE)

# name -> (layout, constructor text, builder, resnext_jax.ResNet kwargs)
FIXTURES: dict[str, tuple[str, str, Callable[[], nn.Module], dict]] = {
    "tv_resnet_basic": (
        "torchvision", "torchvision ResNet(BasicBlock, [1, 1, 1, 1])",
        lambda: torchvision_resnet(tv_resnet.BasicBlock, [1, 1, 1, 1]),
        dict(layers=[1, 1, 1, 1], block="basic", **_OURS)),
    "tv_resnext": (
        "torchvision", "torchvision ResNet(Bottleneck, [2, 1, 1, 1], groups=4, "
        "width_per_group=16)",
        lambda: torchvision_resnet(tv_resnet.Bottleneck, [2, 1, 1, 1], groups=4,
                                   width_per_group=16),
        dict(layers=[2, 1, 1, 1], cardinality=4, base_width=16, **_OURS)),
    "timm_resnext": (
        "timm", "timm ResNet(Bottleneck, [1, 2, 1, 1], cardinality=4, base_width=16)",
        lambda: timm_model([1, 2, 1, 1], cardinality=4, base_width=16),
        dict(layers=[1, 2, 1, 1], cardinality=4, base_width=16, **_OURS)),
    "timm_seresnext": (
        "timm", "timm ResNet(Bottleneck, [1, 1, 2, 1], cardinality=4, base_width=16, "
        "block_args=dict(attn_layer='se'))",
        lambda: timm_model([1, 1, 2, 1], cardinality=4, base_width=16, **_SE),
        dict(layers=[1, 1, 2, 1], cardinality=4, base_width=16, se="timm", **_OURS)),
    "timm_seresnext_d": (
        "timm", "timm ResNet(Bottleneck, [1, 1, 1, 2], cardinality=4, base_width=16, "
        "stem_type='deep', stem_width=16, avg_down=True, attn_layer='se')",
        lambda: timm_model([1, 1, 1, 2], cardinality=4, base_width=16, stem_type="deep",
                           stem_width=16, **_SE_D),
        dict(layers=[1, 1, 1, 2], cardinality=4, base_width=16, se="timm", stem="deep",
             stem_width=16, stem_features=32, downsample="avg", **_OURS)),
    "timm_seresnext_t": (
        "timm", "timm ResNet(Bottleneck, [1, 1, 1, 1], cardinality=4, base_width=16, "
        "stem_type='deep_tiered', stem_width=16, avg_down=True, attn_layer='se')",
        lambda: timm_model([1, 1, 1, 1], cardinality=4, base_width=16,
                           stem_type="deep_tiered", stem_width=16, **_SE_D),
        dict(layers=[1, 1, 1, 1], cardinality=4, base_width=16, se="timm",
             stem="deep_tiered", stem_width=16, stem_features=32, downsample="avg", **_OURS)),
    "legacy_seresnext": (
        "legacy", "timm legacy SENet(SEResNeXtBottleneck, [2, 1, 1, 1], groups=4)",
        lambda: legacy_senet(timm_senet.SEResNeXtBottleneck, [2, 1, 1, 1], LEGACY_PLANES,
                             groups=4),
        dict(layers=[2, 1, 1, 1], cardinality=4, base_width=4, se="legacy",
             stem="legacy_7x7", **{**_OURS, "stage_planes": list(LEGACY_PLANES)})),
    "legacy_senet": (
        "legacy", "timm legacy SENet(SEBottleneck, [1, 1, 1, 1], groups=4, inplanes=32, "
        "input_3x3=True, downsample_kernel_size=3, downsample_padding=1)",
        lambda: legacy_senet(timm_senet.SEBottleneck, [1, 1, 1, 1], SENET_PLANES, groups=4,
                             inplanes=32,
                             input_3x3=True, downsample_kernel_size=3, downsample_padding=1),
        dict(layers=[1, 1, 1, 1], block="senet154", cardinality=4, se="legacy",
             stem="legacy_deep", stem_width=64, stem_features=32, downsample="conv3x3",
             **{**_OURS, "stage_planes": list(SENET_PLANES)})),
}


def randomise(model: nn.Module, seed: int) -> None:
    """Random values everywhere: BN affine and running statistics, SE and fc biases too
    (timm zero-inits the last BN of each block, which would hide half of each block)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape,
                                                            generator=gen))
                module.running_var.copy_(1.5 * torch.rand(module.running_var.shape,
                                                          generator=gen) + 0.5)
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,),
                                                                   generator=gen)))
            elif isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))


def reference_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stem map before pooling, every stage, pre-logits and logits, in eval mode."""
    if hasattr(model, "layer0"):  # legacy SENet
        stem = model.layer0(x)
        y = model.pool0(stem)
    else:
        stem = model.conv1(x)
        stem = (model.act1 if hasattr(model, "act1") else model.relu)(model.bn1(stem))
        y = model.maxpool(stem)
    out = {"stem": stem}
    for stage in range(1, 5):
        y = getattr(model, f"layer{stage}")(y)
        out[f"layer{stage}"] = y
    out["pre_logits"] = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)
    out["logits"] = model(x)
    head = model.last_linear if hasattr(model, "last_linear") else model.fc
    assert torch.allclose(head(out["pre_logits"]), out["logits"], atol=1e-6)
    return out


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    manifest = {"input_shape": list(INPUT_SHAPE), "versions": {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "safetensors": safetensors.__version__}, "fixtures": {}}
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    for seed, (name, (layout, built_with, build, ours)) in enumerate(FIXTURES.items()):
        torch.manual_seed(seed)
        model = build()
        randomise(model, seed + 1)
        model.eval()
        with torch.no_grad():
            outputs = reference_outputs(model, x)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, os.path.join(OUT, f"{name}.safetensors"),
                                    metadata={"format": "pt", "built_with": built_with})
        safetensors.torch.save_file({"input": x, **outputs},
                                    os.path.join(OUT, f"{name}.outputs.safetensors"))
        params = sum(p.numel() for p in model.parameters())
        manifest["fixtures"][name] = dict(layout=layout, built_with=built_with, resnet=ours,
                                          params=params)
        print(f"{name}: {params:,} params, logits {tuple(outputs['logits'].shape)}")
    with open(os.path.join(OUT, "manifest.json"), "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=1)
        stream.write("\n")


if __name__ == "__main__":
    main()
