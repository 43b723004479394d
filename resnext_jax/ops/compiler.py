"""XLA compiler options under which these models run fastest, per backend.

Pass them to ``jax.jit(fn, compiler_options=compiler_options())``; they apply to that
computation only, never to the rest of the process (unlike ``XLA_FLAGS``).

On the CPU, XLA hands matrix products, elementwise ops and reductions to YNNPACK by default.
For ResNeXt, Eigen's matrix products are faster and YNNPACK's reductions (BatchNorm
statistics and gradients) are faster than XLA's own loops, so only reductions go to
YNNPACK. Measured on the project's 2-core CPU, ResNeXt-50 32x4d, fp32, batch 16: training
step 3.1-3.5 vs 2.6-3.0 img/s, inference 13.7-15.3 vs 10.4-11.2 img/s (README "Speed").
"""

from __future__ import annotations

import functools
from typing import Any

import jax

_CPU = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _accepted(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this jaxlib knows these options (older ones reject unknown names)."""
    try:
        jax.jit(lambda: 0, compiler_options=dict(options)).lower().compile()
    except Exception:  # noqa: BLE001 - any rejection means "do not use them"
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options for ``backend`` (default: JAX's default backend); ``{}`` where none help.

    GPU / TPU get none: XLA's defaults there have not been measured worse.
    """
    if (backend or jax.default_backend()) != "cpu" or not _accepted(tuple(_CPU.items())):
        return {}
    return dict(_CPU)
