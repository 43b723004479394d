"""Grouped convolution with XLA-friendly forward and gradient formulations.

XLA:CPU lowers a grouped convolution to slow paths, above all its kernel gradient (a
``batch_group_count`` convolution, jax-ml/jax#13800), and the forward of narrow groups; the
figures are in docs/speed.md. Here:

- ``direct_conv``: the forward pass as ``kh * kw * in_width`` broadcast multiply-adds over
  the output, which XLA fuses into one vectorised loop, behind a conditional so that it is
  computed once. Fast for narrow groups (in-width <= 8), hopeless for wide ones (the fusion
  grows with ``kh * kw * in_width``).
- ``kernel_grad``: the kernel gradient as batched contractions, one per kernel row, over
  blocks of output columns.
- ``input_grad``: the input gradient as stride-1 convolutions of the output gradient, one
  per stride phase (XLA's own transposed grouped convolution is slower than its forward).
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
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0),
                                              (0, 0, 0)))
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


def _unfused(fn, *args, otherwise=None):
    """``fn(*args)`` compiled as a computation of its own, which XLA neither fuses into its
    consumers nor recomputes inside each of them.

    A conditional's branches are separate computations. The predicate (the first argument's
    first element is finite) is opaque to XLA; the other branch, ``otherwise`` (default
    ``fn``), must compute the same result, so it never depends on which branch runs.
    ``lax.optimization_barrier`` does not do this: XLA:CPU expands it before fusion.
    """
    return lax.cond(jnp.isfinite(jnp.ravel(args[0])[0]), fn, otherwise or fn, *args)


def direct_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                groups: int) -> jax.Array:
    """Grouped convolution as a sum of broadcast products, one per (tap, input channel).

    Unfused: otherwise XLA fuses these multiply-adds into every consumer (BatchNorm
    statistics, normalisation, ReLU, the gradient's transposes) and redoes them in each. The
    other branch is XLA's convolution, which compiles faster than a second copy of this one.
    """
    static = dict(stride=stride, padding=padding, groups=groups)
    return _unfused(functools.partial(_direct_conv, **static), x, kernel,
                    otherwise=functools.partial(xla_conv, **static))


def _direct_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                 groups: int) -> jax.Array:
    kh, kw, width, out = kernel.shape
    per_group = out // groups
    rows = kernel.astype(jnp.float32).reshape(kh * kw * width, out)
    y = None
    for dh, dw, xt in _taps(x.astype(jnp.float32), kh, kw, stride, padding):
        xg = xt.reshape(xt.shape[:3] + (groups, width))
        for i in range(width):
            term = xg[..., i, None] * rows[(dh * kw + dw) * width + i].reshape(groups, per_group)
            y = term if y is None else y + term
    return y.reshape(y.shape[:3] + (out,)).astype(x.dtype)


def _kernel_grad_block(stride: int, out_width: int) -> int:
    """Output columns per block: the fastest on ResNeXt-50's layers (docs/speed.md)."""
    return 4 if stride == 1 and out_width >= 14 else 2


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                padding: Padding, groups: int) -> jax.Array:
    """d(loss)/d(kernel) from the input ``x`` and output cotangent ``dy``, float32.

    Per group it is a contraction over all N*H*W pixels into a tiny (taps x width x out)
    result, and a dot reads no strided view, so every tap would need a shifted copy of the
    input. Instead the output columns are cut into blocks of ``b`` and each input row into
    the overlapping windows those blocks read (``span`` columns): one contraction per kernel
    row then gives, for every (window column, output column) pair, the product summed over
    N, H and the blocks, and tap ``dw`` is the diagonal ``window column = column * stride
    + dw``. That copies the input ``kh * span / (b * stride)`` times instead of ``kh * kw``
    times, for ``span / kw`` times the multiplications, which are cheap here.
    """
    kh, kw, width, out = kernel_shape
    n, ho, wo, _ = dy.shape
    per_group = out // groups
    b = min(_kernel_grad_block(stride, wo), wo)
    blocks = -(-wo // b)
    span = (b - 1) * stride + kw
    (top, bottom), (left, right) = padding
    right += max(0, (blocks * b - 1) * stride + kw - (x.shape[2] + left + right))

    def channel_major_x(x):  # (groups, n, h, w, width), padded
        xg = x.reshape(x.shape[:3] + (groups, width)).transpose(3, 0, 1, 2, 4)
        return jnp.pad(xg, ((0, 0), (0, 0), (top, bottom), (left, right), (0, 0)))

    def blocked_dy(dy):  # (groups, n, ho, blocks, b, per_group), zero columns past wo
        d = dy.reshape(n, ho, wo, groups, per_group).transpose(3, 0, 1, 2, 4)
        d = jnp.pad(d, ((0, 0), (0, 0), (0, 0), (0, blocks * b - wo), (0, 0)))
        return d.reshape(groups, n, ho, blocks, b, per_group)

    xg, dyb = _unfused(channel_major_x, x), _unfused(blocked_dy, dy)
    column = jnp.arange(b)
    taps = []
    for dh in range(kh):
        rows = xg[:, :, dh:dh + (ho - 1) * stride + 1:stride]
        windows = jnp.stack([rows[:, :, :, u:u + (blocks - 1) * b * stride + 1:b * stride]
                             for u in range(span)], axis=4)  # (g, n, ho, blocks, span, i)
        pairs = jnp.einsum("gnhjui,gnhjvo->guivo", windows, dyb,
                           preferred_element_type=jnp.float32)
        taps += [pairs[:, column * stride + dw, :, column].sum(0) for dw in range(kw)]
    return jnp.stack(taps).transpose(0, 2, 1, 3).reshape(kernel_shape)


def _transposed_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """The kernel of the input gradient: spatially flipped, in/out swapped within each group."""
    kh, kw, width, out = kernel.shape
    k = kernel[::-1, ::-1].reshape(kh, kw, width, groups, out // groups)
    return k.transpose(0, 1, 4, 3, 2).reshape(kh, kw, out // groups, groups * width)


def input_grad(dy: jax.Array, kernel: jax.Array, in_hw: tuple[int, int], stride: int,
               padding: Padding, groups: int, conv) -> jax.Array:
    """d(loss)/d(x) as ``stride ** 2`` stride-1 convolutions of ``dy``, one per output phase.

    Input pixel ``i`` sits at ``j = i + pad = m * stride + q`` in padded coordinates and
    receives ``dy[m - e] * kernel[e * stride + q]``: phase ``q`` is a full correlation of
    ``dy`` with the flipped sub-kernel ``kernel[q::stride]``. Unlike convolving a
    zero-dilated ``dy``, this does no multiplications by inserted zeros. ``conv`` is
    ``direct_conv`` or ``xla_conv``.
    """
    n = dy.shape[0]
    cin = groups * kernel.shape[2]
    size = [-(-(lo + hw) // stride) for (lo, _), hw in zip(padding, in_hw, strict=True)]
    rows = []
    for qh in range(stride):
        cols = []
        for qw in range(stride):
            sub = kernel[qh::stride, qw::stride]
            if 0 in sub.shape[:2]:  # kernel narrower than the stride: no tap reaches here
                cols.append(jnp.zeros((n, size[0], size[1], cin), dy.dtype))
                continue
            pads = tuple((length - 1, m - d) for length, m, d in
                         zip(sub.shape[:2], size, dy.shape[1:3], strict=True))
            cols.append(conv(dy, _transposed_kernel(sub, groups), 1, pads, groups))
        rows.append(jnp.stack(cols, axis=3))
    dx = jnp.stack(rows, axis=2).reshape(n, size[0] * stride, size[1] * stride, cin)
    (top, _), (left, _) = padding
    return dx[:, top:top + in_hw[0], left:left + in_hw[1]]


def use_direct(kernel_shape: tuple[int, ...], groups: int) -> bool:
    """Narrow groups, where the direct form's fusion stays small and beats XLA's forward
    (docs/speed.md has the times that set the bound). The dtype does not change the choice: the
    direct form accumulates in float32."""
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
    dx = input_grad(dy, kernel, x.shape[1:3], stride, padding, groups,
                    direct_conv if direct else xla_conv)
    dk = kernel_grad(x, dy, kernel.shape, stride, padding, groups)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


grouped_conv.defvjp(_grouped_fwd, _grouped_bwd)
