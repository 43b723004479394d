"""ResNet, ResNeXt and SE-ResNeXt as one Flax linen module.

Parameter tree: ``stem`` (``conv1``/``bn1`` ...), blocks ``layer{stage}_{index}`` (``conv1``,
``bn1``, ``conv2`` (grouped), ``bn2``, ``conv3``, ``bn3``, ``se``, ``downsample``) and the
classifier ``fc``: the PyTorch names with ``.`` as ``_``, which keeps weight porting simple.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnext_jax import ops
from resnext_jax.layers import (
    GLOBAL_POOLS,
    Conv,
    Downsample,
    Dropout,
    DropPath,
    ModuleDef,
    SqueezeExcite,
    Stem,
    global_pool,
)

BLOCKS = ("basic", "bottleneck", "senet154")
SE_RULES = (None, "timm", "legacy")  # no SE, make_divisible(C / 16, 8), C // 16


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); ``features`` is both widths."""

    features: int
    strides: int
    downsample: str | None
    se: ModuleDef | None
    drop_path: float
    zero_init_last: bool
    conv: ModuleDef
    norm: ModuleDef
    data_axis: ops.AxisName | None = None  # for drop-path masks, see layers.row_masks

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self.conv(self.features, 3, self.strides, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y, use_running_average=not train))
        y = self.conv(self.features, 3, 1, name="conv2")(y)
        y = self.norm(name="bn2", scale_init=_last_scale_init(self.zero_init_last))(
            y, use_running_average=not train)
        return _residual(self, x, y, self.features, train)


class Bottleneck(nn.Module):
    """1x1 -> grouped 3x3 (carries the stride, "v1.5") -> 1x1, SE after bn3, add, ReLU."""

    mid_features: int  # conv1 output
    group_features: int  # grouped conv2 output
    features: int  # conv3 output
    cardinality: int
    strides: int
    downsample: str | None
    se: ModuleDef | None
    drop_path: float
    zero_init_last: bool
    conv: ModuleDef
    norm: ModuleDef
    data_axis: ops.AxisName | None = None  # for drop-path masks, see layers.row_masks

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self.conv(self.mid_features, 1, 1, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y, use_running_average=not train))
        y = self.conv(self.group_features, 3, self.strides,
                      feature_group_count=self.cardinality, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y, use_running_average=not train))
        y = self.conv(self.features, 1, 1, name="conv3")(y)
        y = self.norm(name="bn3", scale_init=_last_scale_init(self.zero_init_last))(
            y, use_running_average=not train)
        return _residual(self, x, y, self.features, train)


def _last_scale_init(zero: bool):
    return nn.initializers.zeros if zero else nn.initializers.ones


def _residual(block: nn.Module, x: jax.Array, y: jax.Array, features: int,
              train: bool) -> jax.Array:
    """SE, drop path, shortcut and the final ReLU, shared by both block types."""
    if block.se is not None:
        y = block.se(name="se")(y)
    y = DropPath(block.drop_path, block.data_axis, name="drop_path")(y, deterministic=not train)
    if block.downsample is not None:
        x = Downsample(block.downsample, features, block.strides, block.conv, block.norm,
                       name="downsample")(x, train)
    return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet / ResNeXt / SE-ResNeXt backbone and classifier on NHWC images.

    As in timm: ``__call__`` returns logits ``(N, num_classes)``, or the pooled features
    ``(N, num_features)`` when ``num_classes=0``; ``forward_features`` the last stage's map;
    ``forward_intermediates`` a dict of the ``stem`` and ``layer1..4`` maps, which
    ``feature_info`` describes. ``train_from`` (at apply time) fine-tunes the parts from that
    one on: the parts before it keep BatchNorm in eval mode and pass no gradient back.
    """

    layers: Sequence[int]
    block: str = "bottleneck"
    cardinality: int = 1
    base_width: int = 64
    stem: str = "7x7"
    stem_width: int = 64  # widths of the deep stems' first two convs
    stem_features: int = 64  # channels the stem hands to the first stage
    stage_planes: Sequence[int] = (64, 128, 256, 512)
    downsample: str = "conv"
    se: str | None = None  # None, "timm" (make_divisible(C/16, 8)) or "legacy" (C // 16)
    num_classes: int = 1000
    in_chans: int = 3
    global_pool: str = "avg"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True
    remat: bool = False
    lowering: str = "auto"  # see resnext_jax.ops.resolve
    # The mesh axis (or axes) that splits the batch: grouped convs then run per device,
    # BatchNorm inside a shard_map averages its statistics over it (resnext_jax.ops.sharding).
    data_axis: ops.AxisName | None = None
    # The compute dtype; "auto": the fastest for the platform compiled for (float32 on the
    # CPU, bfloat16 on GPU / TPU), decided when traced (resnext_jax.ops.resolve_dtype).
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        self._check_options()
        self.compute_dtype = dtype = ops.resolve_dtype(self.dtype)
        conv = functools.partial(Conv, lowering=self.lowering, data_axis=self.data_axis,
                                 dtype=dtype, param_dtype=self.param_dtype)
        # Inside a shard_map over data_axis each device holds a slice of the batch; in a
        # jit over the global batch XLA reduces across devices by itself.
        norm = functools.partial(
            nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype,
            param_dtype=self.param_dtype,
            axis_name=self.data_axis if ops.manual(self.data_axis) else None)
        max_pool = functools.partial(ops.max_pool, lowering=self.lowering)
        se = (functools.partial(SqueezeExcite, rule=self.se, dtype=dtype,
                                param_dtype=self.param_dtype) if self.se else None)
        self.stem_layers = Stem(self.stem, self.stem_features, self.stem_width, conv, norm,
                                max_pool, name="stem")
        block_cls = nn.remat(_BLOCK_TYPES[self.block], static_argnums=(2,)) if self.remat \
            else _BLOCK_TYPES[self.block]
        in_features = self.stem_features
        total, index, stages = sum(self.layers), 0, []
        for stage, (depth, planes) in enumerate(zip(self.layers, self.stage_planes, strict=True)):
            blocks = []
            for i in range(depth):
                strides = 2 if i == 0 and stage > 0 else 1
                out = planes * self._expansion
                kwargs = dict(
                    strides=strides, downsample=self._downsample_kind(strides, in_features, out),
                    se=se, drop_path=self.drop_path_rate * index / max(total - 1, 1),
                    zero_init_last=self.zero_init_last, conv=conv, norm=norm,
                    data_axis=self.data_axis, name=f"layer{stage + 1}_{i}")
                if self.block == "basic":
                    blocks.append(block_cls(features=out, **kwargs))
                else:
                    mid, grouped = self._bottleneck_widths(planes)
                    blocks.append(block_cls(mid_features=mid, group_features=grouped,
                                            features=out, cardinality=self.cardinality,
                                            **kwargs))
                in_features, index = out, index + 1
            stages.append(tuple(blocks))
        self.stages = tuple(stages)
        if self.num_classes > 0:
            self.head_drop = Dropout(self.drop_rate, self.data_axis)
            self.fc = nn.Dense(self.num_classes, dtype=dtype, param_dtype=self.param_dtype)

    @property
    def _expansion(self) -> int:
        """Output channels of a block per ``stage_planes`` unit."""
        return 1 if self.block == "basic" else 4

    def _downsample_kind(self, strides: int, in_features: int, out: int) -> str | None:
        if strides == 1 and in_features == out:
            return None
        if self.downsample == "conv3x3" and strides == 1:  # Cadene: 3x3 only when strided
            return "conv"
        return self.downsample

    def _bottleneck_widths(self, planes: int) -> tuple[int, int]:
        if self.block == "senet154":  # Cadene's SEBottleneck: planes*2 -> planes*4 (grouped)
            return planes * 2, planes * 4
        width = int(planes * self.base_width / 64) * self.cardinality
        return width, width

    def _check_options(self) -> None:
        problems = []
        if self.block not in BLOCKS:
            problems.append(f"block={self.block!r} is not one of {BLOCKS}")
        if self.block == "basic" and (self.cardinality != 1 or self.base_width != 64):
            problems.append("the basic block has no grouped conv: use cardinality=1, "
                            "base_width=64, or block='bottleneck'")
        if len(self.layers) != len(self.stage_planes) or not self.layers:
            problems.append(f"layers={tuple(self.layers)} needs one depth per stage width "
                            f"{tuple(self.stage_planes)}")
        if any(d < 1 for d in self.layers):
            problems.append(f"every stage needs a block, got layers={tuple(self.layers)}")
        if self.se not in SE_RULES:
            problems.append(f"se={self.se!r} must be None, 'timm' or 'legacy'")
        if self.global_pool not in GLOBAL_POOLS:
            problems.append(f"global_pool={self.global_pool!r} is not one of {GLOBAL_POOLS}")
        if not 0.0 <= self.drop_rate < 1.0 or not 0.0 <= self.drop_path_rate < 1.0:
            problems.append("drop_rate and drop_path_rate must lie in [0, 1)")
        if self.num_classes < 0 or self.cardinality < 1 or self.base_width < 1:
            problems.append("num_classes must be >= 0, cardinality and base_width >= 1")
        if problems:
            raise ValueError("invalid ResNet options: " + "; ".join(problems))

    @property
    def parts(self) -> tuple[str, ...]:
        """The network's parts in order, as ``train_from`` names them; each is also the
        first component of its parameters' paths (``layer2_0`` belongs to ``layer2``)."""
        return ("stem", *(f"layer{i + 1}" for i in range(len(self.layers))), "fc")

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """Channels and reduction (input size / map size) of each feature map."""
        stem_reduction = 1 if self.stem == "cifar" else 2
        info = [dict(module="stem", num_chs=self.stem_features, reduction=stem_reduction)]
        reduction = stem_reduction * (1 if self.stem == "cifar" else 2)
        for stage, planes in enumerate(self.stage_planes):
            reduction *= 1 if stage == 0 else 2
            info.append(dict(module=f"layer{stage + 1}", num_chs=planes * self._expansion,
                             reduction=reduction))
        return info

    @property
    def num_features(self) -> int:
        """Width of the pooled pre-logits."""
        width = self.feature_info[-1]["num_chs"]
        return 2 * width if self.global_pool == "catavgmax" else width

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected an NHWC image batch of rank 4, got shape {x.shape}; "
                             "add a batch axis with x[None] for a single image")
        if x.shape[-1] != self.in_chans:
            hint = (" (this looks like NCHW: use x.transpose(0, 2, 3, 1))"
                    if x.shape[1] == self.in_chans else "")
            raise ValueError(f"expected {self.in_chans} channels in the last axis (NHWC), "
                             f"got shape {x.shape}{hint}")
        if x.shape[0] == 0:
            raise ValueError(f"an empty batch (shape {x.shape}): give at least one image")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"expected a floating-point image batch, got {x.dtype}; convert "
                            "and normalise first, e.g. (x.astype(jnp.float32) / 255 - mean) / std")
        smallest = self.feature_info[-1]["reduction"]
        if min(x.shape[1:3]) < smallest:
            raise ValueError(f"input {x.shape[1]}x{x.shape[2]} is smaller than the network's "
                             f"total stride {smallest}; use images of at least "
                             f"{smallest}x{smallest}")

    def forward_intermediates(self, x: jax.Array, train: bool = False,
                              train_from: str = "stem") -> dict[str, jax.Array]:
        """The stem's map (before its max pool) and every stage's output, by
        ``feature_info``'s module names."""
        self._check_input(x)
        if train_from not in self.parts:
            raise ValueError(f"train_from={train_from!r} is not one of {self.parts}")
        first = self.parts.index(train_from)
        stem_map, x = self.stem_layers(jnp.asarray(x, self.compute_dtype), train and first == 0)
        features = {"stem": stem_map}
        for stage, blocks in enumerate(self.stages, start=1):
            if stage == first:  # nothing before this stage trains
                x = jax.lax.stop_gradient(x)
            for block in blocks:
                x = block(x, train and stage >= first)
            features[f"layer{stage}"] = x
        if first > len(self.stages):  # only the classifier trains
            features[f"layer{len(self.stages)}"] = jax.lax.stop_gradient(x)
        return features

    def forward_features(self, x: jax.Array, train: bool = False,
                         train_from: str = "stem") -> jax.Array:
        """The last stage's map ``(N, H, W, C)``, before pooling."""
        return self.forward_intermediates(x, train, train_from)[f"layer{len(self.layers)}"]

    def forward_head(self, x: jax.Array, train: bool = False,
                     pre_logits: bool = False) -> jax.Array:
        """Global pool, dropout and classifier on the last feature map."""
        x = global_pool(x, self.global_pool)
        if pre_logits or self.num_classes == 0:
            return x
        return self.fc(self.head_drop(x, deterministic=not train))

    def __call__(self, x: jax.Array, train: bool = False,
                 train_from: str = "stem") -> jax.Array:
        return self.forward_head(self.forward_features(x, train, train_from), train)


_BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck, "senet154": Bottleneck}


def count_params(variables: Any) -> int:
    """Number of trainable parameters (the ``params`` collection), as timm counts them."""
    params = variables.get("params", variables)
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
