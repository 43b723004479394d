"""XLA compiler options under which these models run fastest, per backend.

Pass them to ``jax.jit(fn, compiler_options=compiler_options(train=...))``; they apply to that
computation only, never to the rest of the process (unlike ``XLA_FLAGS``).

On the CPU, XLA hands matrix products, elementwise ops and reductions to YNNPACK by default.
For ResNeXt, Eigen's matrix products are faster; YNNPACK's reductions (train-mode BatchNorm
statistics and gradients) are faster than XLA's own loops, but a YNNPACK reduction also
absorbs the products and convolutions that feed it. So a training step hands only reductions
to YNNPACK, and inference, whose only reduction is the final pooling (where that absorption
swallowed the last two blocks: 102 ms of a 1.1 s batch), hands it nothing. Measured on the
project's 2-core CPU, ResNeXt-50 32x4d, fp32, batch 16, huge pages on (below), each pair
side by side: training step 3.95-4.22 vs 3.54-3.82 img/s with XLA's defaults, inference
16.8 vs 12.9-14.5 img/s; in full benchmark runs the differences were within their noise
(README "Speed").

The other CPU cost no option reaches: XLA allocates a step's temporaries afresh on every
call, and with 4 KiB pages the kernel faults in each one (about a million page faults and a
fifth of the CPU time of a ResNeXt-50 step). glibc's ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
read at process start, backs them with transparent huge pages: :func:`huge_pages_hint`.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from typing import Any

import jax

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_CPU_TRAIN = {_YNN: "LIBRARY_FUSION_TYPE_REDUCE"}
_CPU_INFER = {_YNN: ""}


@functools.cache
def _accepted(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this jaxlib knows these options (older ones reject unknown names)."""
    try:
        jax.jit(lambda: 0, compiler_options=dict(options)).lower().compile()
    except Exception:  # noqa: BLE001 - any rejection means "do not use them"
        return False
    return True


def compiler_options(*, train: bool, backend: str | None = None) -> dict[str, Any]:
    """The options for ``backend`` (default: JAX's default backend); ``{}`` where none help.

    ``train``: for a computation with train-mode BatchNorm (a training step); ``False`` for
    inference and evaluation. GPU / TPU get none: XLA's defaults there have not been
    measured worse.
    """
    options = _CPU_TRAIN if train else _CPU_INFER
    if (backend or jax.default_backend()) != "cpu" or not _accepted(tuple(options.items())):
        return {}
    return dict(options)


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
            "set before Python starts (huge pages for XLA's per-step buffers; README \"Speed\")")


def reexec_with_huge_pages() -> None:
    """Restart this process, same interpreter and command line, with glibc's huge-page malloc.

    For the project's own command lines and benchmarks, called first thing (the tunable is
    read only at process start, so nothing in a running process can turn it on). Does
    nothing off Linux / glibc < 2.35, without transparent huge pages, when ``JAX_PLATFORMS``
    leaves out the CPU, or when ``GLIBC_TUNABLES`` already names ``glibc.malloc.hugetlb``
    (``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` opts out). The cost is one more start of the
    interpreter and the imports so far (about 1.5 s on 2 cores).
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
