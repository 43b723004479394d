"""Pooling with PyTorch's padding semantics (NHWC)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from resnext_jax.ops.conv import resolve


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
