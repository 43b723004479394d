import atexit
import os
import shutil
import sys
import tempfile

# torchvision (the parity tests import it through timm) imports triton through torch._dynamo;
# triton's LLVM and TensorFlow's, loaded in one process, crash it (a segmentation fault, seen
# with torch 2.14.1 and TensorFlow 2.21). Triton compiles GPU kernels, which no test uses.
sys.modules.setdefault("triton", None)

# Tests run on the CPU even where an accelerator is present, and keep TensorFlow quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The command lines re-execute themselves with this (resnext_jax.ops.reexec_with_huge_pages,
# tested on its own); the subprocesses here start with it and skip that second start.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")

# One compilation cache for this test session, shared with the subprocesses it starts (the
# main job, the CLIs and the notebooks compile the same programs again and again: about half
# of a small run's time). A fresh private directory: a cache is trusted code, never shared.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="resnext_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_collection_modifyitems(items):
    """The long end-to-end files first, so that parallel workers finish together."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)
