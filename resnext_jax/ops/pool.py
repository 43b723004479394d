"""Pooling with PyTorch's padding semantics (NHWC)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def _ceil_extra(size: int, window: int, stride: int, pad: int) -> int:
    """Extra right padding PyTorch's ``ceil_mode=True`` adds to ``size``."""
    out = math.ceil((size + 2 * pad - window) / stride) + 1
    # PyTorch drops a last window that would start entirely in the right padding.
    if (out - 1) * stride >= size + pad:
        out -= 1
    return max(0, (out - 1) * stride + window - (size + 2 * pad))


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, pad: int = 1,
             ceil_mode: bool = False, lowering: str = "xla") -> jax.Array:
    """``torch.nn.MaxPool2d(window, stride, pad, ceil_mode)`` on NHWC ``x``."""
    del lowering  # only "xla" so far
    extra_h = _ceil_extra(x.shape[1], window, stride, pad) if ceil_mode else 0
    extra_w = _ceil_extra(x.shape[2], window, stride, pad) if ceil_mode else 0
    # A Python scalar init lets JAX recognise the max monoid, which it can differentiate.
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), (pad, pad + extra_h), (pad, pad + extra_w), (0, 0)))


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
