"""The trainer's steps compiled for TPU slices by libtpu on this CPU host (--mode=compile):
default settings reach the TPU compiler with TPU choices, each chip computes only its rows,
and a step that does not fit is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from resnext_jax.errors import UsageError
from resnext_jax.train import aot, get_config

pytestmark = pytest.mark.e2e  # the TPU compiler takes seconds to minutes a step
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _needs_libtpu() -> None:
    pytest.importorskip("libtpu", reason="pip install 'resnext_jax[tpu]'")


def _config(model: str = "tiny_seresnext", batch: int = 32, size: int = 32, **model_fields):
    c = get_config("synthetic")
    c.model.name = model
    c.model.num_classes = 10
    c.data.image_size = size
    c.batch_size = c.eval_batch_size = batch
    for k, v in model_fields.items():
        c.model[k] = v
    return c


def test_unknown_topology_lists_the_known_ones():
    with pytest.raises(UsageError, match="known: v4-8, v4-16") as err:
        aot.get_topology("v4-7")
    assert "\n" not in str(err.value)
    assert aot.get_topology("v5litepod-16") == aot.get_topology("v5e-16")
    assert aot.get_topology("v4-32").chips == 16 and aot.get_topology("v5e-256").chips == 256


@pytest.mark.parametrize("topology", ["v4-8", "v5e-4"])
@pytest.mark.parametrize("dtype, computes_in", [("auto", "bfloat16"), ("float32", "float32")])
def test_default_steps_compile_for_tpu(topology, dtype, computes_in):
    """A model with the default lowering and dtype "auto" compiles with the TPU's choices
    (on this CPU host "auto" would mean the CPU lowering and float32), and no chip gathers
    the global batch (openxla/xla#47945)."""
    _needs_libtpu()
    report = aot.compile_for(_config(dtype=dtype), topology)
    assert report.dtype == computes_in
    assert report.chips == aot.get_topology(topology).chips
    assert report.batch_per_chip == 32 // report.chips
    for program in (report.train, report.eval):
        assert "all-gather" not in program.collectives, program.collectives
        assert 0 < program.hbm_bytes < report.hbm_gib * aot.GIB
        assert program.flops > 0
    # One all-reduce family carries the gradients (data parallelism), the eval one the sums.
    assert report.train.collectives["all-reduce"][0] >= 1
    assert report.fits


def test_lowering_and_dtype_follow_the_mesh_not_the_host():
    """Traced under a TPU mesh on a CPU host: 'auto' is the TPU's lowering and dtype."""
    _needs_libtpu()
    import jax

    from resnext_jax import ops

    mesh = aot.make_mesh(aot.topology_devices("v4-8"))
    assert jax.default_backend() == "cpu"
    assert ops.resolve("auto") == "fast" and ops.fastest_dtype() == "float32"
    with jax.set_mesh(mesh):
        assert ops.resolve("auto") == "xla" and ops.fastest_dtype() == "bfloat16"
        assert ops.compiler_options() == {}


def _compile_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "resnext_jax.main", "--mode=compile",
                           "--config=synthetic", "--config.model.name=tiny_resnext",
                           "--config.model.num_classes=10", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_command_reports_per_chip_need(tmp_path):
    _needs_libtpu()
    report = tmp_path / "report.json"
    done = _compile_cli("--topology=v5litepod-4", "--config.data.image_size=32",
                        "--config.batch_size=16", "--config.eval_batch_size=16",
                        f"--report={report}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny_resnext (bfloat16, 10 classes) on v5litepod-4: 4 chips, 4 images a chip" \
        in done.stdout
    for row in ("HBM needed", "TFLOPs", "all-reduce", "compile", "fits"):
        assert row in done.stdout
    # The console holds our lines only: libtpu's notices on a TPU-less host are filtered.
    assert "TPU_WORKER_HOSTNAMES" not in done.stderr and "Traceback" not in done.stderr
    saved = json.loads(report.read_text())
    assert saved["chips"] == 4 and saved["train"]["temp_bytes"] > 0


def test_max_batch_compiles_powers_of_two():
    _needs_libtpu()
    done = _compile_cli("--topology=v5e-4", "--config.data.image_size=32",
                        "--config.batch_size=16", "--config.eval_batch_size=16",
                        "--max_batch=4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "largest per-chip batch that fits (powers of two up to 4): 4" in done.stdout


def test_batch_too_large_for_v5e_is_one_line():
    _needs_libtpu()
    done = _compile_cli("--topology=v5e-4", "--config.data.image_size=224",
                        "--config.batch_size=32768", "--config.eval_batch_size=32768")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    for words in ("8192 images a chip need", "GiB of HBM", "usable of 16 GiB a chip",
                  "grad_accum_steps", "model.remat"):
        assert words in errors[0], errors[0]


def test_unknown_topology_on_the_command_line():
    done = _compile_cli("--topology=v9-8")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown TPU topology 'v9-8'; known: v4-8" in done.stderr


def test_parallel_apply_compiles_for_a_tpu_mesh_with_the_tpu_choices():
    """Inference over a TPU slice (extract uses this): 'auto' lowering and dtype resolve for
    the TPU, and no chip gathers the batch."""
    _needs_libtpu()
    import jax
    import jax.numpy as jnp

    import resnext_jax as rx
    from resnext_jax import hlo

    model = rx.create_model("tiny_seresnext", dtype="auto")
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    apply = rx.ParallelApply(model, aot.topology_devices("v5e-4"))
    images = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    compiled = apply.lower(variables, images).compile()
    kinds = {c.kind for c in hlo.collectives(compiled.as_text())}
    assert "all-gather" not in kinds
    assert "bf16[" in compiled.as_text()  # computed in bfloat16, the TPU's "auto"
