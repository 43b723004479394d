"""A workdir is hostile too: links planted in it are refused before anything is written
through them, a poisoned metrics record is dropped like a torn line, a damaged checkpoint
never loads as other weights, and what the project writes gets the umask's mode."""

from __future__ import annotations

import json
import os

import pytest

import resnext_jax as rx
from resnext_jax.errors import UsageError
from resnext_jax.weights import WeightsFileError


@pytest.fixture
def outside(tmp_path):
    """A file outside the workdir that a planted link points at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    return workdir, victim


def test_a_link_at_the_lock_is_refused_and_its_target_untouched(outside):
    from resnext_jax.train.files import WorkdirLock

    workdir, victim = outside
    os.symlink(victim, workdir / ".lock")
    with pytest.raises(UsageError, match=r"\.lock is a symbolic link; remove it"):
        WorkdirLock(str(workdir))
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval_metrics.jsonl"])
def test_appends_never_go_through_a_planted_link(outside, name):
    from resnext_jax.train.files import append_line

    workdir, victim = outside
    os.symlink(victim, workdir / name)
    with pytest.raises(UsageError, match="is a symbolic link"):
        append_line(str(workdir / name), '{"step": 1}')
    assert victim.read_text() == "precious\n"


def test_metric_writer_refuses_a_linked_metrics_file_before_training(outside):
    from resnext_jax.train.metrics import MetricWriter

    workdir, victim = outside
    os.symlink(victim, workdir / "metrics.jsonl")
    with pytest.raises(UsageError, match="metrics.jsonl is a symbolic link"):
        MetricWriter(str(workdir), 0)
    assert victim.read_text() == "precious\n"


def test_a_poisoned_metrics_record_is_dropped_with_a_notice(tmp_path):
    from resnext_jax.train.metrics import repair

    path = tmp_path / "metrics.jsonl"
    good = [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5}]
    bad = [{"step": "x"}, {"step": None}, {"step": True}, [1, 2], {"no": "step"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:1] + bad + good[1:]))
    notice = repair(str(path), last_step=2)
    assert notice is not None and f"dropped {len(bad)} damaged line(s)" in notice
    assert [json.loads(line) for line in path.read_text().splitlines()] == good


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    from resnext_jax.files import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "w.bin", b"x")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")  # what open() gives, the user's expectation
    finally:
        os.umask(old)
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 \
        == 0o666 & ~umask


def _trained_workdir(tmp_path) -> str:
    from resnext_jax import train

    config = train.get_config("synthetic")
    config.model.name, config.data.image_size = "tiny_resnext", 32
    config.batch_size = config.eval_batch_size = 8
    config.num_train_steps, config.checkpoint.async_save = 2, False
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    os.remove(os.path.join(workdir, "final_weights.msgpack"))  # load the checkpoint instead
    return workdir


def test_loading_a_workdir_checks_the_checkpoint_digest(tmp_path):
    """One bit flipped anywhere in the newest checkpoint's state files: the load refuses
    it or returns the identical weights (the bit was in the optimizer's state), never other
    weights."""
    import jax
    import numpy as np

    workdir = _trained_workdir(tmp_path)
    intact = jax.tree_util.tree_leaves(rx.load(workdir).variables)
    state = os.path.join(workdir, "checkpoints", "2", "state")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs
                   if os.path.getsize(os.path.join(d, f)) > 1000)
    refused = 0
    for file in files:
        original = open(file, "rb").read()
        for at in np.linspace(0, len(original) - 1, 12).astype(int):
            damaged = bytearray(original)
            damaged[at] ^= 0x10
            open(file, "wb").write(bytes(damaged))
            try:
                loaded = jax.tree_util.tree_leaves(rx.load(workdir).variables)
            except WeightsFileError:
                refused += 1
            else:
                assert all(np.array_equal(a, b) for a, b in zip(loaded, intact, strict=True))
            open(file, "wb").write(original)
    assert refused > 0
