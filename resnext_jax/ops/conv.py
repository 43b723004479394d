"""2-D convolution with a pluggable lowering.

The kernel is always in ``flax.linen.Conv``'s layout, ``(kh, kw, in // groups, out)``,
and the input is NHWC. Padding is explicit and symmetric, as PyTorch pads.
"""

from __future__ import annotations

import jax
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]

LOWERINGS = ("xla",)


def _conv_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
              groups: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: Padding = ((0, 0), (0, 0)), groups: int = 1,
           lowering: str = "xla") -> jax.Array:
    """Convolve NHWC ``x`` with an HWIO ``kernel`` split into ``groups`` groups."""
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown convolution lowering {lowering!r}; choose one of {LOWERINGS}")
    return _conv_xla(x, kernel, stride, padding, groups)
