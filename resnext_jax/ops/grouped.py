"""Grouped convolution with XLA-friendly forward and gradient formulations.

XLA:CPU lowers a grouped convolution to slow paths: its forward is 5-10x slower than
PyTorch for narrow groups, and its kernel gradient (a ``batch_group_count`` convolution)
is up to 100x slower than the same sums written as per-tap contractions
(jax-ml/jax#13800; numbers in the README's "Speed" section). Here:

- ``direct_conv``: the forward pass as ``kh * kw * in_width`` broadcast multiply-adds over
  the output, which XLA fuses into one vectorised loop. Fast for narrow groups (in-width
  <= 8), hopeless for wide ones (the fusion grows with ``kh * kw * in_width``).
- ``kernel_grad``: the kernel gradient as one batched contraction per tap.
- ``grouped_conv``: a ``jax.custom_vjp`` that uses the direct form (or XLA's own grouped
  convolution) forward and for the input gradient, and ``kernel_grad`` for the kernel.

All functions take the kernel in ``flax.linen.Conv``'s layout ``(kh, kw, in // groups, out)``
and NHWC inputs, and accumulate in float32 (as XLA's convolutions do for bf16).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]


def _out_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def _taps(x: jax.Array, kh: int, kw: int, stride: int, padding: Padding):
    """Yield ``(dh, dw, x_tap)``: the padded input seen by kernel tap (dh, dw), output-sized."""
    ho = _out_size(x.shape[1], kh, stride, padding[0])
    wo = _out_size(x.shape[2], kw, stride, padding[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    for dh in range(kh):
        for dw in range(kw):
            yield dh, dw, xp[:, dh:dh + (ho - 1) * stride + 1:stride,
                             dw:dw + (wo - 1) * stride + 1:stride, :]


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
             groups: int) -> jax.Array:
    """XLA's own convolution (the reference lowering)."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def direct_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                groups: int) -> jax.Array:
    """Grouped convolution as a sum of broadcast products, one per (tap, input channel)."""
    kh, kw, width, out = kernel.shape
    per_group = out // groups
    k32 = kernel.astype(jnp.float32).reshape(kh, kw, width, groups, per_group)
    y = None
    for dh, dw, xt in _taps(x.astype(jnp.float32), kh, kw, stride, padding):
        xg = xt.reshape(xt.shape[:3] + (groups, width))
        for i in range(width):
            term = xg[..., i, None] * k32[dh, dw, i]
            y = term if y is None else y + term
    return y.reshape(y.shape[:3] + (out,)).astype(x.dtype)


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                padding: Padding, groups: int) -> jax.Array:
    """d(loss)/d(kernel) from the input ``x`` and output cotangent ``dy``, float32."""
    kh, kw, width, out = kernel_shape
    dyg = dy.reshape(dy.shape[:3] + (groups, out // groups))
    taps = [jnp.einsum("nhwgi,nhwgo->igo", xt.reshape(xt.shape[:3] + (groups, width)), dyg,
                       preferred_element_type=jnp.float32)
            for _, _, xt in _taps(x, kh, kw, stride, padding)]
    return jnp.stack(taps).reshape(kernel_shape)


def _transposed_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """The kernel of the input gradient: spatially flipped, in/out swapped within each group."""
    kh, kw, width, out = kernel.shape
    k = kernel[::-1, ::-1].reshape(kh, kw, width, groups, out // groups)
    return k.transpose(0, 1, 4, 3, 2).reshape(kh, kw, out // groups, groups * width)


def direct_input_grad(dy: jax.Array, kernel: jax.Array, in_hw: tuple[int, int], stride: int,
                      padding: Padding, groups: int) -> jax.Array:
    """d(loss)/d(x) of ``direct_conv``: the direct conv of the dilated ``dy``, flipped kernel."""
    kh, kw = kernel.shape[:2]
    pads = [(0, 0, 0)]
    for size, k, (lo, _), out in zip(in_hw, (kh, kw), padding, dy.shape[1:3], strict=True):
        low = k - 1 - lo
        pads.append((low, size + k - 1 - ((out - 1) * stride + 1) - low, stride - 1))
    pads.append((0, 0, 0))
    dyd = lax.pad(dy, jnp.zeros((), dy.dtype), pads)
    return direct_conv(dyd, _transposed_kernel(kernel, groups), 1, ((0, 0), (0, 0)), groups)


def use_direct(kernel_shape: tuple[int, ...], groups: int) -> bool:
    """Narrow groups: the direct form's fusion stays small (measured, README "Speed")."""
    kh, kw, width, _ = kernel_shape
    return groups > 1 and width <= 8 and kh * kw * width <= 72


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def grouped_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                 groups: int, direct: bool) -> jax.Array:
    """Grouped conv: forward by ``direct_conv`` (``direct``) or XLA; custom gradients."""
    return (direct_conv if direct else xla_conv)(x, kernel, stride, padding, groups)


def _grouped_fwd(x, kernel, stride, padding, groups, direct):
    return grouped_conv(x, kernel, stride, padding, groups, direct), (x, kernel)


def _grouped_bwd(stride, padding, groups, direct, residuals, dy):
    x, kernel = residuals
    if direct:
        dx = direct_input_grad(dy, kernel, x.shape[1:3], stride, padding, groups)
    else:
        _, vjp = jax.vjp(lambda v: xla_conv(v, kernel, stride, padding, groups), x)
        (dx,) = vjp(dy)
    dk = kernel_grad(x, dy, kernel.shape, stride, padding, groups)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


grouped_conv.defvjp(_grouped_fwd, _grouped_bwd)
