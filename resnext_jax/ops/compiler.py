"""Process and compiler settings under which these models run fastest, per backend.

:func:`compiler_options` are XLA options for one computation:
``jax.jit(fn, compiler_options=compiler_options())``; they never touch the rest of the process.
On the CPU, XLA hands matrix products, elementwise ops and reductions to YNNPACK by default.
For ResNeXt, Eigen's matrix products are faster; YNNPACK's reductions (train-mode BatchNorm
statistics and gradients) are faster than XLA's own loops, so only reductions go to YNNPACK.
Inference has none left (the global pooling is a product, ``layers.spatial_mean``), so the
same options serve training and inference.

The other CPU cost is memory: XLA allocates a step's buffers afresh on every call; glibc's
malloc maps every block over its 32 MiB ``mmap`` ceiling and unmaps it on free, and the
kernel faults in each 4 KiB page again. glibc's ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, read
only at process start, backs them with transparent huge pages (:func:`huge_pages_hint`,
:func:`reexec_with_huge_pages`). Keeping the blocks in the heap instead (``mallopt``) removes the
faults, but the heap fragments and grows without bound, so the project does not do it
(docs/speed.md has the figures).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from typing import Any

import jax
import jax.numpy as jnp

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_CPU_OPTIONS = {_YNN: "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _accepted(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this jaxlib knows these options (older ones reject unknown names)."""
    try:
        jax.jit(lambda: 0, compiler_options=dict(options)).lower().compile()
    except Exception:  # noqa: BLE001 - any rejection means "do not use them"
        return False
    return True


def target_platform() -> str:
    """The platform the computation being traced is compiled for: that of the context mesh's
    devices (a ``shard_map``'s mesh, ``jax.set_mesh``), else JAX's default backend.

    A host compiles for devices it does not have (a TPU slice from a CPU host, ahead of
    time), so ``jax.default_backend()`` alone would choose for the wrong machine.
    """
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def compiler_options(*, backend: str | None = None) -> dict[str, Any]:
    """The options for ``backend`` (default: :func:`target_platform`); ``{}`` where none help.

    GPU / TPU get none: XLA's defaults there have not been measured worse.
    """
    if (backend or target_platform()) != "cpu" or not _accepted(tuple(_CPU_OPTIONS.items())):
        return {}
    return dict(_CPU_OPTIONS)


HUGE_PAGES = "glibc.malloc.hugetlb=1"


def _huge_pages_supported() -> bool:
    """Linux with glibc >= 2.35 (which reads the tunable) and transparent huge pages on."""
    if platform.system() != "Linux":
        return False
    name, version = platform.libc_ver()
    if name != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _tunable_chosen() -> bool:
    return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def fastest_dtype(backend: str | None = None) -> jnp.dtype:
    """The compute dtype these models run fastest in on ``backend`` (default:
    :func:`target_platform`):
    bfloat16 on GPU / TPU (their matrix units), float32 on the CPU, where XLA:CPU's bfloat16
    is no faster than its float32 (docs/speed.md). What ``dtype="auto"`` resolves to."""
    return jnp.dtype(jnp.float32 if (backend or target_platform()) == "cpu"
                     else jnp.bfloat16)


def resolve_dtype(dtype: Any, backend: str | None = None) -> Any:
    """``dtype`` as a ``ResNet`` field takes it: ``"auto"`` becomes :func:`fastest_dtype`
    for ``backend`` (default: :func:`target_platform`)."""
    return fastest_dtype(backend) if isinstance(dtype, str) and dtype == "auto" else dtype


def huge_pages_hint(backend: str | None = None) -> str | None:
    """A one-line hint when a Linux CPU run would be faster with glibc's huge-page malloc.

    ``None`` off the CPU, off Linux / glibc < 2.35, when transparent huge pages are disabled,
    or when ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb``.
    """
    if (backend or jax.default_backend()) != "cpu" or _tunable_chosen():
        return None
    if not _huge_pages_supported():
        return None
    return ("CPU training runs up to 1.3x faster with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
            "set before Python starts (huge pages for XLA's per-step buffers; for a Jupyter "
            "kernel, see docs/speed.md)")


def reexec_with_huge_pages() -> None:
    """Restart this process, same interpreter and command line, with glibc's huge-page malloc.

    For the project's own command lines and benchmarks, called first thing (the tunable is
    read only at process start, so nothing in a running process can turn it on). Does
    nothing off Linux / glibc < 2.35, without transparent huge pages, when ``JAX_PLATFORMS``
    leaves out the CPU, or when ``GLIBC_TUNABLES`` already names ``glibc.malloc.hugetlb``
    (``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` opts out). The cost is one more start of the
    interpreter and of the imports so far.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if _tunable_chosen() or (platforms and "cpu" not in platforms.split(",")):
        return
    if not _huge_pages_supported():
        return
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), HUGE_PAGES]))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:  # an interpreter that cannot be re-run: go on without huge pages
        pass
