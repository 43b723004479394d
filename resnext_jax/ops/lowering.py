"""2-D convolution and pooling with a pluggable lowering, PyTorch's padding semantics.

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
import math

import jax
import jax.numpy as jnp
from jax import lax

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


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int = 1,
           padding: Padding = ((0, 0), (0, 0)), feature_group_count: int = 1,
           lowering: str = "auto", data_axis: AxisName | None = None) -> jax.Array:
    """Convolve NHWC ``x`` with an HWIO ``kernel`` split into ``feature_group_count`` groups
    (the argument names of ``flax.linen.Conv`` and ``lax.conv_general_dilated``).

    ``data_axis``: the mesh axis that splits the batch; a grouped convolution then runs on
    each device's own rows (:mod:`resnext_jax.ops.sharding`).
    """
    lowering, stride, groups = resolve(lowering), strides, feature_group_count
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


def _ceil_extra(size: int, window: int, stride: int, pad: int) -> int:
    """Extra right padding PyTorch's ``ceil_mode=True`` adds to ``size``."""
    out = math.ceil((size + 2 * pad - window) / stride) + 1
    # PyTorch drops a last window that would start entirely in the right padding.
    if (out - 1) * stride >= size + pad:
        out -= 1
    return max(0, (out - 1) * stride + window - (size + 2 * pad))


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, pad: int = 1,
             ceil_mode: bool = False, lowering: str = "auto") -> jax.Array:
    """``torch.nn.MaxPool2d(window, stride, pad, ceil_mode)`` on NHWC ``x``.

    ``lowering`` as for ``conv2d``: ``"fast"`` and ``"portable"`` take the running maximum of
    the window's strided slices (XLA:CPU's ``reduce_window`` gradient is slower; jax2onnx
    turns an NHWC ``reduce_window`` into a 4-D ``MaxPool`` that onnxruntime rejects); every
    lowering sends the gradient to the first maximum of each window, as PyTorch does.
    """
    extra_h = _ceil_extra(x.shape[1], window, stride, pad) if ceil_mode else 0
    extra_w = _ceil_extra(x.shape[2], window, stride, pad) if ceil_mode else 0
    pads = ((pad, pad + extra_h), (pad, pad + extra_w))
    if resolve(lowering) in ("fast", "portable"):
        return _slice_max_pool(x, window, stride, pads)
    # A Python scalar init lets JAX recognise the max monoid, which it can differentiate.
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0),) + pads + ((0, 0),))


def _pool_taps(x: jax.Array, window: int, stride: int, pads):
    xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),), constant_values=-jnp.inf)
    n, h, w, c = xp.shape
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    # lax.slice, not indexing: with a symbolic batch (export) indexing would gather.
    return [lax.slice(xp, (0, dh, dw, 0),
                      (n, dh + (ho - 1) * stride + 1, dw + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1))
            for dh in range(window) for dw in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _slice_max_pool(x: jax.Array, window: int, stride: int, pads) -> jax.Array:
    return functools.reduce(jnp.maximum, _pool_taps(x, window, stride, pads))


def _slice_max_pool_fwd(x, window, stride, pads):
    y = _slice_max_pool(x, window, stride, pads)
    return y, (x, y)


def _slice_max_pool_bwd(window, stride, pads, residuals, dy):
    x, y = residuals
    found = jnp.zeros(y.shape, bool)
    dx = jnp.zeros((x.shape[0], x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]),
                    x.shape[3]), dy.dtype)
    zero = jnp.zeros((), dy.dtype)
    for t, xt in enumerate(_pool_taps(x, window, stride, pads)):
        first = (xt == y) & ~found  # the first maximum in row-major window order wins
        found = found | first
        dh, dw = divmod(t, window)
        contrib = jnp.where(first, dy, zero)
        dx = dx + lax.pad(contrib, zero, (
            (0, 0, 0),
            (dh, dx.shape[1] - dh - (y.shape[1] - 1) * stride - 1, stride - 1),
            (dw, dx.shape[2] - dw - (y.shape[2] - 1) * stride - 1, stride - 1),
            (0, 0, 0)))
    (top, _), (left, _) = pads
    return (dx[:, top:top + x.shape[1], left:left + x.shape[2]],)


_slice_max_pool.defvjp(_slice_max_pool_fwd, _slice_max_pool_bwd)


def avg_pool_ceil(x: jax.Array, window: int = 2, stride: int = 2) -> jax.Array:
    """``AvgPool2d(window, stride, ceil_mode=True, count_include_pad=False)`` on NHWC ``x``.

    The ResNet-D shortcut uses it; partial windows at the border average only the
    pixels they cover.
    """
    extra_h = _ceil_extra(x.shape[1], window, stride, 0)
    extra_w = _ceil_extra(x.shape[2], window, stride, 0)
    pads = ((0, 0), (0, extra_h), (0, extra_w), (0, 0))
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    if extra_h == 0 and extra_w == 0:
        return total / (window * window)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
    return total / count
