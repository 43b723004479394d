"""Data parallelism that scales: on 8 simulated devices each device computes its own rows.

Equal numbers are not enough: XLA gathers the global batch onto every device for a grouped
convolution under a plain sharded jit (openxla/xla#47945) and still gets them right. These
tests read the compiled programs (``resnext_jax.hlo``): no all-gather or all-to-all, and
all-reduce bytes within 1.1x of what data parallelism needs, for the trainer's train and
eval steps and for a backbone in a user's own sharded jit; and the same numbers as on one
device. ``tests/sharded_checks.py`` runs once in a subprocess (the device count is fixed at
start-up) and reports everything as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # subprocesses: see pyproject.toml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATHERS = ("all-gather", "all-to-all", "reduce-scatter", "collective-permute")
TRAIN_CASES = ("resnext_fast", "seresnext_fast_accum_droppath_mixing",
               "seresnext_xla_bf16_accum")


@pytest.fixture(scope="module")
def checks():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_checks.py")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def _no_gathers(per_device: dict, what: str) -> None:
    for kind in GATHERS:
        assert per_device[f"{kind}_count"] == 0, f"{what}: {per_device[f'{kind}_count']} {kind}"


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_and_eval_steps_move_only_what_data_parallelism_needs(checks, case):
    eight = checks[case]["8"]
    _no_gathers(eight["train"], f"{case} train step")
    _no_gathers(eight["eval"], f"{case} eval step")
    # One all-reduce of the gradients, BatchNorm statistics forward and backward per
    # micro-batch, the metrics; nothing gathered.
    assert 0.9 * eight["ideal"] <= eight["train"]["all-reduce_bytes"] <= 1.1 * eight["ideal"]
    assert eight["eval"]["all-reduce_bytes"] <= 1.1 * 16  # four float32 sums


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_eight_devices_compute_the_numbers_of_one(checks, case):
    one, eight = checks[case]["1"], checks[case]["8"]
    bf16 = "bf16" in case
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=2e-3 if bf16 else 1e-5)
    np.testing.assert_allclose(eight["eval_loss"], one["eval_loss"], rtol=2e-3 if bf16 else 1e-5)
    for a, b in zip(eight["params"], one["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-3 if bf16 else 1e-5)


def test_backbone_in_a_users_sharded_jit_stays_per_device_with_data_axis(checks):
    with_axis = checks["backbone"]
    _no_gathers(with_axis["forward"], "forward with data_axis")
    _no_gathers(with_axis["grad"], "gradient with data_axis")
    assert with_axis["warnings"] == []
    assert with_axis["logits_err"] < 1e-5 and with_axis["grad_err"] < 1e-5
    # The gradient's all-reduces: the parameter gradients and BatchNorm statistics.
    assert with_axis["grad"]["all-reduce_bytes"] <= 1.1 * with_axis["ideal"]


def test_without_data_axis_xla_gathers_the_batch_and_says_so(checks):
    """The control: the same jit without ``data_axis`` is XLA's gather path, with a warning."""
    plain, fixed = checks["backbone_without_data_axis"], checks["backbone"]
    assert plain["forward"]["all-gather_count"] > 0 and plain["grad"]["all-gather_count"] > 0
    assert plain["forward"]["flops"] > 1.2 * fixed["forward"]["flops"]
    assert any("data_axis" in w and "openxla/xla#47945" in w for w in plain["warnings"])


def test_parallel_apply_runs_each_devices_rows(checks):
    """What ``extract`` and ``viz`` run on several devices."""
    _no_gathers(checks["parallel_apply"]["forward"], "parallel_apply")
    assert checks["parallel_apply"]["forward"]["all-reduce_count"] == 0
    assert checks["parallel_apply"]["logits_err"] < 1e-5


def test_explicit_sharding_needs_no_data_axis_for_inference(checks):
    _no_gathers(checks["explicit_mesh"]["forward"], "forward under an explicit mesh")
    assert checks["explicit_mesh"]["logits_err"] < 1e-5


def test_readme_sharded_jit_snippet_runs_on_eight_devices(checks):
    assert checks["readme"]["logits_err"] < 1e-4
    assert checks["readme"]["features"]["layer4"] == [16, 2, 2, 2048]  # 2 rows a device
