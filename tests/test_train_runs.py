"""End-to-end runs of ``python -m resnext_jax.main`` in subprocesses on the embedded digits with
a tiny SE-ResNeXt: 1 vs 8 devices, 2 processes x 4 devices vs 1 x 8, SIGKILL / SIGTERM and
exact resume, NaN stop, corrupted checkpoint fallback, full disk, bad flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import resnext_jax as rx

pytestmark = pytest.mark.e2e  # subprocesses: see pyproject.toml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.batch_size=16", "--config.eval_batch_size=48", "--config.log_every_steps=1",
         "--config.eval_every_epochs=0", "--config.data.num_shards=2"]


def _env(devices: int = 1, **extra: str) -> dict[str, str]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    return env


def _cmd(workdir, *overrides: str, steps: int = 8, every: int = 4) -> list[str]:
    return [sys.executable, "-m", "resnext_jax.main", "--config=digits",
            f"--workdir={workdir}", *SMALL, f"--config.num_train_steps={steps}",
            f"--config.checkpoint.every_steps={every}", *overrides]


def _run(cmd, devices=1, timeout=240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(devices), capture_output=True, text=True,
                          timeout=timeout, **kw)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _params(workdir, step: int | None = None) -> dict[str, np.ndarray]:
    directory = os.path.join(workdir, "checkpoints")
    if step is None:
        step = max(int(d) for d in os.listdir(directory) if d.isdigit())
    path = os.path.join(directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                      checkpointer.metadata(path).item_metadata.tree)
    tree = checkpointer.restore(path, restore_args=as_numpy)  # any device count
    flat = {}
    for key in ("params", "batch_stats", "ema"):
        for path, leaf in _flatten(tree.get(key) or {}):
            flat[f"{key}/{path}"] = np.asarray(leaf)
    return flat


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}" if prefix else k)
    else:
        yield prefix, tree


def _losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def digits_ready():
    """Build the embedded dataset once (into the default TFDS data dir) before parallel runs."""
    code = "from resnext_jax.data import open_source; open_source('sklearn_digits')"
    _ok(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), timeout=240,
                       capture_output=True, text=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_ready):
    """An uninterrupted 1-device run of 8 steps (checkpoints at 4 and 8)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = _ok(_run(_cmd(workdir)))
    return workdir, result


def test_reference_run_writes_metrics_checkpoints_and_progress(reference):
    workdir, result = reference
    assert sorted(_losses(workdir)) == list(range(1, 9))
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= final["eval/top1"] <= 1.0 and final["eval/top5"] >= final["eval/top1"]
    assert os.path.exists(os.path.join(workdir, "final_metrics.json"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    assert "8/8" in result.stderr  # the tqdm bar
    # What the README shows: the run's weights load back with one call, with their model
    # (the config's name) and eval transform (8x8 grey, [-1, 1]).
    for source in (workdir, os.path.join(workdir, "final_weights.msgpack")):
        trained = rx.load(source)
        assert trained.cfg.model == "digits_seresnext"
        assert trained.transform == rx.Transform(8, 1.0, mean=(0.5,), std=(0.5,), channels=1)
        assert trained.cfg.top1 == pytest.approx(100 * final["eval/top1"])
    # A second run of the same command finds the finished run and only evaluates.
    again = _ok(_run(_cmd(workdir)))
    assert "already finished (step 8 of 8)" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["eval/top1"] == final["eval/top1"]


def _close(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, digits_ready):
    workdir = str(tmp_path_factory.mktemp("eight"))
    _ok(_run(_cmd(workdir), devices=8))
    return workdir


def test_eight_devices_match_one(reference, eight_devices):
    ref = reference[0]
    one, eight = _losses(ref), _losses(eight_devices)
    np.testing.assert_allclose([eight[s] for s in sorted(one)], [one[s] for s in sorted(one)],
                               rtol=1e-5)
    # fp32 sums in a different order (per-device partial sums for BatchNorm and gradients)
    _close(_params(ref), _params(eight_devices), rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_of_eight(tmp_path, eight_devices):
    workdir, port = str(tmp_path), _free_port()
    env = _env(4, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs = [subprocess.Popen(
        _cmd(workdir, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(list(_losses(workdir).values()),
                               list(_losses(eight_devices).values()), rtol=1e-5)
    _close(_params(workdir), _params(eight_devices), rtol=1e-5, atol=1e-6)


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigkill_then_sigterm_then_restart_ends_bit_identical(tmp_path, digits_ready):
    """40 steps, checkpoints every 10: SIGKILL once step 10 is saved, restart, SIGTERM once
    step 20 is saved (which saves where it stands and exits 0), restart to the end. With the
    random draws of a modern recipe on: RandAugment, repeated augmentation, Mixup / CutMix,
    random erasing, an EMA with warm-up."""
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    recipe = ["--config.mixing.mixup_alpha=0.8", "--config.mixing.cutmix_alpha=1.0",
              "--config.data.random_erase=0.25", "--config.ema_decay=0.99",
              "--config.ema_warmup=True", "--config.data.auto_augment=rand-m9-mstd0.5-inc1",
              "--config.data.repeats=2"]
    cmd = lambda w: _cmd(w, *recipe, steps=40, every=10)  # noqa: E731
    ref_proc = subprocess.Popen(cmd(ref), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(cmd(run), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(run, "checkpoints", "10"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = subprocess.Popen(cmd(run), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(run, "checkpoints", "20"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming from step" in err and "preempted: saving step" in err
    stopped = int(err.split("preempted: saving step ")[1].split()[0])
    assert 20 <= stopped < 40
    assert str(stopped) in os.listdir(os.path.join(run, "checkpoints"))
    final = _ok(_run(cmd(run)))
    assert f"resuming from step {stopped}" in final.stderr
    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-3000:]
    a, b = _params(ref, 40), _params(run, 40)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical on CPU
    ref_loss, run_loss = _losses(ref), _losses(run)
    assert all(ref_loss[s] == run_loss[s] for s in ref_loss)
    # One train record per step, though steps after the SIGKILLed checkpoint ran twice.
    with open(os.path.join(run, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == list(range(1, 41))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits_ready):
    workdir = str(tmp_path)
    result = _run(_cmd(workdir, "--config.optimizer.base_lr=1e12", "--config.optimizer."
                       "warmup_epochs=0", steps=8, every=1))
    assert result.returncode == 1
    assert "became NaN/Inf at step" in result.stderr and "Last good checkpoint" in result.stderr
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
    bad = int(result.stderr.split("became NaN/Inf at step ")[1].split()[0])
    assert steps and max(steps) < bad
    assert all(np.isfinite(v).all() for v in _params(workdir, max(steps)).values())


def test_corrupted_latest_checkpoint_falls_back(tmp_path, reference):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference[0], workdir)
    latest = os.path.join(workdir, "checkpoints", "8")
    for dirpath, _, files in os.walk(latest):
        for f in files:
            if "ocdbt" in dirpath or f.endswith("manifest.ocdbt"):
                with open(os.path.join(dirpath, f), "r+b") as fh:
                    fh.write(b"\0garbage" * 8)
    result = _ok(_run(_cmd(workdir, "--mode=eval")))  # evaluation never renames
    assert "checkpoint of step 8" in result.stderr and "falling back to step 4" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["weights"] == "step 4"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    result = _ok(_run(_cmd(workdir)))  # training sets it aside and redoes steps 5-8
    assert "moved aside, falling back to step 4" in result.stderr
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8", "corrupt_8"]


def test_full_disk_while_saving_keeps_what_was_written(tmp_path, reference):
    """A file-size limit makes every large write fail (EFBIG), as a full disk would."""
    workdir = str(tmp_path / "w")
    shutil.copytree(reference[0], workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        before = f.read()

    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
               " resource.setrlimit(resource.RLIMIT_FSIZE, (32_000, 32_000));"
               " runpy.run_module('resnext_jax.main', run_name='__main__', alter_sys=True)")
    result = _run([sys.executable, "-c", limited, *_cmd(workdir, steps=12)[3:]])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could not write the checkpoint of step 8" in result.stderr
    assert "resumes from the last complete checkpoint" in result.stderr
    assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints"))
                  if d.isdigit()) == ["4"]
    _params(workdir, 4)  # still readable
    # The records up to the checkpoint it resumed from are kept as they were (the later ones
    # are the run's to write again); every line is whole.
    kept = [line for line in before.splitlines() if json.loads(line)["step"] <= 4]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        after = f.read().splitlines()
    assert after[:len(kept)] == kept
    assert all(json.loads(line)["step"] > 4 for line in after[len(kept):])


def test_bad_flags_and_batch_fail_with_clear_messages(tmp_path, digits_ready):
    result = _run(_cmd(tmp_path, "--config.optimizer.nam=sgd"))
    assert result.returncode != 0
    assert "unknown config key 'nam' (did you mean 'name'?)" in result.stderr
    result = _run(_cmd(tmp_path, "--config.batch_size=12"), devices=8)
    assert result.returncode == 2  # a usage error, like every command-line mistake
    assert "batch_size=12 is not divisible by the 8 devices" in result.stderr


def test_eval_only_with_exported_weights_reproduces_the_final_eval(tmp_path, reference):
    workdir, result = reference
    weights = os.path.join(workdir, "final_weights.msgpack")
    final = json.loads(result.stdout.strip().splitlines()[-1])
    out = _ok(_run(_cmd(tmp_path / "fresh", "--mode=eval",
                        f"--config.model.pretrained={weights}")))
    evaluated = json.loads(out.stdout.strip().splitlines()[-1])
    assert evaluated["weights"] == weights and evaluated["split"] == "test"
    assert evaluated["eval/top1"] == pytest.approx(final["eval/top1"], abs=1e-6)
    assert evaluated["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-5)


@pytest.mark.parametrize("flag, says", [
    ("--config.model.name=digits_resnext", "holds a different model"),
    ("--config.ema_decay=0.99", "ema: 0 arrays in the checkpoint"),
    ("--config.optimizer.name=adamw", "opt_state: "),
])
def test_checkpoints_of_another_set_up_stop_the_run_untouched(tmp_path, reference, flag, says):
    """Another model, EMA switched on or another optimizer: a usage error naming the part
    that differs, no traceback, and no checkpoint set aside as damaged."""
    workdir = str(tmp_path / "w")
    shutil.copytree(reference[0], workdir)
    result = _run(_cmd(workdir, flag, steps=12))
    assert result.returncode == 2, result.stderr[-2000:]
    assert says in result.stderr and "new --workdir" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_sigterm_in_start_up_and_ctrl_c_in_training_stop_cleanly(tmp_path, digits_ready):
    workdir = str(tmp_path)
    proc = subprocess.Popen(_cmd(workdir, steps=200, every=4), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(workdir, ".lock"), proc)  # the run is being built: no loop yet
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]  # was 143
    assert "stopped by SIGTERM before training started" in err
    proc = subprocess.Popen(_cmd(workdir, steps=200, every=4), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(workdir, "checkpoints", "4"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "interrupted: saving step" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    # Only what happened: no summary of a finished run, no final weights that were not written.
    assert "done in" not in err and "final_weights" not in err
    assert not os.path.exists(os.path.join(workdir, "final_weights.msgpack"))
    stopped = int(err.split("interrupted: saving step ")[1].split()[0])
    assert str(stopped) in os.listdir(os.path.join(workdir, "checkpoints"))
