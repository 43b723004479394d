"""What the command lines keep off the console: notices that native libraries print straight
to file descriptor 2 while they load, which look like failures but are not (TensorFlow's
C++ start-up lines; libtpu's on a host without a TPU, where JAX still tries it)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

KNOWN_NOTICES = re.compile(
    r"oneDNN custom operations are on|All log messages before absl::InitializeLog|"
    r"cpu_feature_guard|rebuild TensorFlow with the appropriate compiler flags|"
    r"Unable to initialize backend|has no dataset_info\.json|Metadata file does not exist|"
    r"TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|Logging before InitGoogle|"
    r"Source Location Trace|libtpu_init_utils")


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Hold what is written to file descriptor 2 during the block; pass on every line but the
    known notices when it ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not KNOWN_NOTICES.search(line):
                    sys.stderr.write(line)


def start_jax() -> None:
    """Start JAX's backends now, with their loading notices filtered."""
    import jax

    with filtered_native_stderr():
        jax.devices()
