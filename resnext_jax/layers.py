"""Flax building blocks of the ResNet family, on top of :mod:`resnext_jax.ops`.

Parameter names and layouts follow ``flax.linen`` (``Conv`` kernels are
``(kh, kw, in // groups, out)``); padding is PyTorch's symmetric padding so that
weights ported from torchvision / timm reproduce their outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnext_jax import ops

Dtype = Any
ModuleDef = Any

# timm / torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_padding(kernel_size: int, stride: int = 1) -> int:
    """The symmetric padding PyTorch models use (timm's ``get_padding``)."""
    return ((stride - 1) + (kernel_size - 1)) // 2


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's ``make_divisible`` with ``round_limit=0``, as its SE layers use it."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def se_features(channels: int, rule: str, reduction: int = 16) -> int:
    """Width of the SE bottleneck: ``"timm"`` rounds to a multiple of 8, ``"legacy"`` floors."""
    if rule == "timm":
        return make_divisible(channels / reduction, 8)
    if rule == "legacy":
        return channels // reduction
    raise ValueError(f"unknown SE width rule {rule!r}; use 'timm' or 'legacy'")


class Conv(nn.Module):
    """``nn.Conv`` with symmetric padding and a swappable lowering (see :mod:`resnext_jax.ops`)."""

    features: int
    kernel_size: int = 1
    strides: int = 1
    feature_group_count: int = 1
    padding: int | None = None  # None: PyTorch's padding for this kernel and stride
    use_bias: bool = False
    lowering: str = "auto"  # see resnext_jax.ops.resolve
    data_axis: ops.AxisName | None = None  # mesh axis splitting the batch, see ops.sharding
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = conv_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = self.feature_group_count
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(
                f"{self.name}: {x.shape[-1]} input and {self.features} output channels "
                f"must both be divisible by feature_group_count={groups}")
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init,
                            (k, k, x.shape[-1] // groups, self.features), self.param_dtype)
        bias = (self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        pad = torch_padding(k, self.strides) if self.padding is None else self.padding
        y = ops.conv2d(x, kernel, strides=self.strides, padding=((pad, pad), (pad, pad)),
                       feature_group_count=groups, lowering=self.lowering,
                       data_axis=self.data_axis)
        return y if bias is None else y + bias


def spatial_mean(x: jax.Array) -> jax.Array:
    """The float32 mean of NHWC maps over H x W, ``(N, C)``, as a matrix-vector product.

    XLA:CPU turns a reduction this large into a slow padded reduce-window (its tree
    reduction), and by default hands the final pooling to a YNNPACK fusion that swallows the
    last blocks' products; a product with a constant does neither. Batched over the rows, so
    that no operand needs a transpose.
    """
    n, height, width, c = x.shape
    pixels = x.astype(jnp.float32).reshape(n, height * width, c)
    # (N, 1, H W) by broadcasting, so that a symbolic batch (export) stays symbolic.
    scale = jnp.zeros_like(pixels[:, :1, :1]) + 1 / (height * width)
    weights = jnp.broadcast_to(scale, (n, 1, height * width))
    return jnp.einsum("nkp,npc->nkc", weights, pixels)[:, 0, :]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): mean pool, FC + ReLU, FC + sigmoid, rescale.

    The gates are sown into the ``intermediates`` collection as ``gate`` so that they
    can be inspected (``model.apply(..., mutable=["intermediates"])``).
    """

    rule: str = "timm"  # width of the hidden layer, see ``se_features``
    reduction: int = 16
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        squeezed = spatial_mean(x)[:, None, None, :].astype(x.dtype)
        reduced = se_features(x.shape[-1], self.rule, self.reduction)
        hidden = nn.relu(dense(reduced, name="fc1")(squeezed))
        gate = nn.sigmoid(dense(x.shape[-1], name="fc2")(hidden))
        self.sow("intermediates", "gate", gate[:, 0, 0, :])
        return x * gate.astype(x.dtype)


def row_masks(key: jax.Array, keep: float, shape: tuple[int, ...],
              data_axis: ops.AxisName | None) -> jax.Array:
    """Bernoulli(``keep``) masks of ``shape``, row ``i`` of the global batch drawn from
    ``fold_in(key, i)``: the same masks whether the batch is on one device or split over
    ``data_axis`` inside a ``shard_map`` (where each device holds ``shape[0]`` rows)."""
    first = lax.axis_index(data_axis) * shape[0] if ops.manual(data_axis) else 0
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, first + jnp.arange(shape[0]))
    return jax.vmap(lambda k: jax.random.bernoulli(k, keep, shape[1:]))(keys)


class Dropout(nn.Module):
    """``nn.Dropout`` with :func:`row_masks`, so masks do not depend on the device layout."""

    rate: float = 0.0
    data_axis: ops.AxisName | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = row_masks(self.make_rng("dropout"), keep, self._mask_shape(x), self.data_axis)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))

    def _mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        return x.shape


class DropPath(Dropout):
    """Stochastic depth per sample (timm's ``DropPath``, rescaled by the keep rate): a
    :class:`Dropout` whose mask has one value per row, dropping or keeping the whole sample."""

    def _mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        return (x.shape[0],) + (1,) * (x.ndim - 1)


STEMS = ("7x7", "deep", "deep_tiered", "cifar", "legacy_7x7", "legacy_deep")


class Stem(nn.Module):
    """Network input layers; returns ``(pre_pool_map, output)``.

    ``7x7``: conv 7x7/2 + BN + ReLU + max-pool 3x3/2 (torchvision, timm).
    ``deep`` / ``deep_tiered``: three 3x3 convs (widths ``w, w, out`` or ``3w/4, w, out``),
    ResNet-D. ``cifar``: one 3x3/1 conv, no pooling. ``legacy_*``: Cadene's SENet stems
    (7x7 or three 3x3 convs), max-pool with ``ceil_mode=True`` and no padding.
    """

    kind: str
    features: int
    stem_width: int
    conv: ModuleDef
    norm: ModuleDef
    max_pool: Callable[..., jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        if self.kind in ("7x7", "legacy_7x7"):
            widths, first = (self.features,), (7, 2)
        elif self.kind == "cifar":
            widths, first = (self.features,), (3, 1)
        elif self.kind in ("deep", "legacy_deep"):
            widths, first = (self.stem_width, self.stem_width, self.features), (3, 2)
        elif self.kind == "deep_tiered":
            widths, first = (3 * (self.stem_width // 4), self.stem_width, self.features), (3, 2)
        else:
            raise ValueError(f"unknown stem {self.kind!r}; choose one of {STEMS}")
        for i, width in enumerate(widths):
            kernel, stride = first if i == 0 else (3, 1)
            x = self.conv(width, kernel, stride, name=f"conv{i + 1}")(x)
            x = nn.relu(self.norm(name=f"bn{i + 1}")(x, use_running_average=not train))
        if self.kind == "cifar":
            return x, x
        if self.kind.startswith("legacy"):
            return x, self.max_pool(x, 3, 2, 0, ceil_mode=True)
        return x, self.max_pool(x, 3, 2, 1)


DOWNSAMPLES = ("conv", "avg", "conv3x3")


class Downsample(nn.Module):
    """Projection shortcut: ``conv`` 1x1/s; ``avg`` 2x2 average pool then 1x1 (ResNet-D);
    ``conv3x3`` 3x3/s (legacy SENet-154, which keeps 1x1 for its unstrided first stage)."""

    kind: str
    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == "conv":
            x = self.conv(self.features, 1, self.strides, name="conv")(x)
        elif self.kind == "avg":
            if self.strides > 1:
                x = ops.avg_pool_ceil(x, 2, self.strides)
            x = self.conv(self.features, 1, 1, name="conv")(x)
        elif self.kind == "conv3x3":
            x = self.conv(self.features, 3, self.strides, name="conv")(x)
        else:
            raise ValueError(f"unknown downsample {self.kind!r}; choose one of {DOWNSAMPLES}")
        return self.norm(name="bn")(x, use_running_average=not train)


GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax")


def global_pool(x: jax.Array, kind: str = "avg") -> jax.Array:
    """Pool NHWC maps to ``(N, C)`` (``(N, 2C)`` for ``catavgmax``), averaging in float32
    (a maximum is exact in any dtype)."""
    if kind == "avg":
        pooled = spatial_mean(x)
    elif kind == "max":
        pooled = x.max(axis=(1, 2))
    elif kind == "avgmax":
        pooled = 0.5 * (spatial_mean(x) + x.max(axis=(1, 2)).astype(jnp.float32))
    elif kind == "catavgmax":
        pooled = jnp.concatenate([spatial_mean(x), x.max(axis=(1, 2)).astype(jnp.float32)],
                                 axis=-1)
    else:
        raise ValueError(f"unknown global_pool {kind!r}; choose one of {GLOBAL_POOLS}")
    return pooled.astype(x.dtype)
