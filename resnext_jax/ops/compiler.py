"""XLA compiler options under which these models run fastest, per backend.

Pass them to ``jax.jit(fn, compiler_options=compiler_options())``; they apply to that
computation only, never to the rest of the process (unlike ``XLA_FLAGS``).

On the CPU, XLA hands matrix products, elementwise ops and reductions to YNNPACK by default.
For ResNeXt, Eigen's matrix products are faster and YNNPACK's reductions (BatchNorm
statistics and gradients) are faster than XLA's own loops, so only reductions go to
YNNPACK. Measured on the project's 2-core CPU, ResNeXt-50 32x4d, fp32, batch 16: training
step 3.1-3.5 vs 2.6-3.0 img/s, inference 13.7-15.3 vs 10.4-11.2 img/s (README "Speed").

The other CPU cost no option reaches: XLA allocates a step's temporaries afresh on every
call, and with 4 KiB pages the kernel faults in each one (about a million page faults and a
fifth of the CPU time of a ResNeXt-50 step). glibc's ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
read at process start, backs them with transparent huge pages: :func:`huge_pages_hint`.
"""

from __future__ import annotations

import functools
import os
import platform
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


def huge_pages_hint(backend: str | None = None) -> str | None:
    """A one-line hint when a Linux CPU run would be faster with glibc's huge-page malloc.

    ``None`` off the CPU, off Linux / glibc < 2.35, when transparent huge pages are disabled,
    or when ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb``.
    """
    if (backend or jax.default_backend()) != "cpu" or platform.system() != "Linux":
        return None
    if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    name, version = platform.libc_ver()
    if name != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
    except OSError:
        return None
    return ("CPU training runs up to 1.3x faster with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
            "set before Python starts (huge pages for XLA's per-step buffers; README \"Speed\")")
