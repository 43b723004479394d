"""Pure array functions (no Flax) behind the model's convolution and pooling layers.

The convolution and the max-pool take a ``lowering`` name. ``"xla"`` is the reference: XLA's own
convolution / reduce_window, forward and gradient. ``"einsum_grad"`` and ``"fast"``
compute the same numbers from the same kernel layout (so checkpoints never depend on the
lowering) by paths that XLA:CPU runs faster; ``"portable"`` by operators that ONNX has
(export); ``"auto"`` (the default) picks one for the platform being compiled for
(:func:`resolve`, :func:`target_platform`). See :mod:`resnext_jax.ops.lowering` and
docs/speed.md.
:func:`compiler_options` are the XLA options to ``jax.jit`` these models with.
"""

from resnext_jax.ops.compiler import (
    compiler_options,
    fastest_dtype,
    huge_pages_hint,
    reexec_with_huge_pages,
    resolve_dtype,
    target_platform,
)
from resnext_jax.ops.lowering import LOWERINGS, avg_pool_ceil, conv2d, max_pool, resolve
from resnext_jax.ops.sharding import DATA_AXIS, AxisName, manual

__all__ = ["DATA_AXIS", "LOWERINGS", "AxisName", "avg_pool_ceil", "compiler_options", "conv2d",
           "fastest_dtype", "huge_pages_hint", "manual", "max_pool", "reexec_with_huge_pages",
           "resolve", "resolve_dtype", "target_platform"]
