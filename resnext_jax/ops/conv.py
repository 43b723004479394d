"""2-D convolution with a pluggable lowering.

The kernel is always in ``flax.linen.Conv``'s layout, ``(kh, kw, in // groups, out)``,
and the input is NHWC. Padding is explicit and symmetric, as PyTorch pads.

Lowerings (same parameters, same numbers up to floating-point rounding):

- ``"xla"``: ``lax.conv_general_dilated`` with ``feature_group_count``; forward and
  gradient by XLA. The reference.
- ``"einsum_grad"``: XLA's convolutions, except that the kernel gradient of a grouped
  convolution is computed as batched contractions, one per kernel row (where XLA:CPU is
  slowest; ``grouped.kernel_grad``).
- ``"fast"``: ``"einsum_grad"`` plus 1x1 convolutions as matrix products and narrow
  groups (in-width <= 8) as fused broadcast multiply-adds, forward and input gradient.
- ``"portable"``: ``"xla"``'s convolutions and ``"fast"``'s max-pool (strided slices): only
  operators that converters to other formats take (ONNX, ``resnext_jax.export``).
- ``"auto"``: ``"fast"`` on the CPU, ``"xla"`` on GPU / TPU, decided by the platform the
  computation is compiled for (see ``resolve``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from resnext_jax.ops.compiler import target_platform
from resnext_jax.ops.grouped import Padding, grouped_conv, use_direct, xla_conv
from resnext_jax.ops.sharding import AxisName, per_device_conv

LOWERINGS = ("xla", "einsum_grad", "fast", "portable", "auto")


def resolve(lowering: str, backend: str | None = None) -> str:
    """The concrete lowering for ``lowering`` on ``backend`` (default: the platform being
    compiled for, :func:`resnext_jax.ops.target_platform`).

    ``"auto"`` means ``"fast"`` on the CPU, where it was measured faster for every layer of
    ResNeXt-50 (docs/speed.md), and XLA's own lowerings elsewhere: on GPU / TPU XLA calls
    cuDNN / its own convolution emitters, which handle groups natively, and the fast forms
    have not been measured better there (``benchmarks/bench_gpu.py`` measures them); the
    TPU compiler aborts on the fast forms' bfloat16 windows.
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown lowering {lowering!r}; choose one of {LOWERINGS}")
    if lowering == "auto":
        return "fast" if (backend or target_platform()) == "cpu" else "xla"
    return lowering


def _conv_1x1(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """A 1x1 convolution as a strided slice and one matrix product (no transposes)."""
    if any(padding[0]) or any(padding[1]):
        x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    n, h, w, c = x.shape
    y = jnp.dot(x.reshape(n * h * w, c), kernel.reshape(c, -1),
                preferred_element_type=jnp.float32)
    return y.reshape(n, h, w, -1).astype(x.dtype)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: Padding = ((0, 0), (0, 0)), groups: int = 1,
           lowering: str = "auto", data_axis: AxisName | None = None) -> jax.Array:
    """Convolve NHWC ``x`` with an HWIO ``kernel`` split into ``groups`` groups.

    ``data_axis``: the mesh axis that splits the batch; a grouped convolution then runs on
    each device's own rows (:mod:`resnext_jax.ops.sharding`).
    """
    lowering = resolve(lowering)
    padding = tuple(tuple(p) for p in padding)
    if groups > 1:
        return per_device_conv(functools.partial(_grouped, stride=stride, padding=padding,
                                                 groups=groups, lowering=lowering),
                               x, kernel, data_axis)
    if lowering == "fast" and kernel.shape[:2] == (1, 1):
        return _conv_1x1(x, kernel, stride, padding)
    return xla_conv(x, kernel, stride, padding, groups)


def _grouped(x: jax.Array, kernel: jax.Array, *, stride: int, padding: Padding, groups: int,
             lowering: str) -> jax.Array:
    if lowering in ("xla", "portable"):
        return xla_conv(x, kernel, stride, padding, groups)
    direct = lowering == "fast" and use_direct(kernel.shape, groups)
    return grouped_conv(x, kernel, stride, padding, groups, direct)
